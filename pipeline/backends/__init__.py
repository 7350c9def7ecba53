"""Inference backends behind one small interface (base.Upscaler) and the automatic choice between them.

    load_upscaler(model_id, engine, denoise_strength=None) -> Upscaler

Choice (`backend auto|openvino|torch`, `device auto|cpu|cuda`, `precision auto|fp32|bf16|fp16`):
- device auto: cuda when torch sees a GPU, else cpu;
- backend auto: torch on cuda, openvino on cpu (torch when openvino is not importable);
- precision auto: fp16 on cuda; with openvino bf16 on a CPU with avx512_bf16 or AMX, f32 on other CPUs;
  the torch CPU fallback stays fp32 (bf16 autocast when asked).
Impossible combinations raise BackendUnavailableError with the reason; BackendInfo.reason says what auto
picked and why, and ends up in every RestoreReport.

Loading: OpenVINO reads the network's IR from the cache (ir.py; converted once in a converter process when
the weights are new), so an OpenVINO process never imports torch; the torch backend loads the weights
through spandrel (pipeline/weights.py). torch is asked about CUDA only where an NVIDIA device node exists.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.backends.base import (
    BackendInfo,
    Upscaler,
    available_cores,
    cpu_bf16_flag,
    cpu_flags,
)
from pipeline.backends.ir import (
    Conversion,
    IrNetwork,
    convert_image_network,
    convert_in_subprocess,
    ir_dir,
    read_network,
    read_refusal,
    register_converter,
    save_ir,
    write_refusal,
)
from pipeline.types import BackendUnavailableError, EngineConfig, UnknownModelError

log = logging.getLogger(__name__)

__all__ = [
    "BackendInfo",
    "HostCapabilities",
    "Upscaler",
    "choose_backend",
    "host_capabilities",
    "load_upscaler",
]


@dataclass(frozen=True)
class HostCapabilities:
    cuda: bool
    cuda_name: str | None
    cuda_bf16: bool
    cpu_bf16_flag: str | None  # "amx_bf16" | "avx512_bf16" | None
    openvino: bool
    cores: int


NVIDIA_DEVICE_NODES = Path("/dev")  # CUDA needs the driver's /dev/nvidia0, /dev/nvidia1, ...


def host_capabilities(dev: Path = NVIDIA_DEVICE_NODES) -> HostCapabilities:
    """What this host can run. torch is asked about CUDA only where an NVIDIA device node exists: without
    one CUDA cannot work, and a CPU worker then never imports torch just to learn that."""
    cuda, cuda_name, cuda_bf16 = False, None, False
    if any(dev.glob("nvidia[0-9]*")) and importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
        cuda_name = torch.cuda.get_device_name(0) if cuda else None
        cuda_bf16 = bool(cuda and torch.cuda.is_bf16_supported())
    return HostCapabilities(
        cuda=cuda,
        cuda_name=cuda_name,
        cuda_bf16=cuda_bf16,
        cpu_bf16_flag=cpu_bf16_flag(cpu_flags()),
        openvino=importlib.util.find_spec("openvino") is not None,
        cores=available_cores(),
    )


def choose_backend(engine: EngineConfig, host: HostCapabilities) -> BackendInfo:
    """Pure decision: which backend/device/precision to run, and why (no torch/openvino work here)."""
    notes: list[str] = []
    device = engine.device
    if device == "auto":
        device = "cuda" if host.cuda else "cpu"
        notes.append(f"cuda available ({host.cuda_name})" if host.cuda else "no cuda GPU")
    elif device == "cuda" and not host.cuda:
        raise BackendUnavailableError("device cuda requested but torch sees no CUDA GPU; use --device cpu")

    backend = engine.backend
    if backend == "auto":
        if device == "cuda":
            backend = "torch"
        elif host.openvino:
            backend = "openvino"
        else:
            backend = "torch"
            notes.append("openvino not installed")
    if backend == "openvino" and device == "cuda":
        raise BackendUnavailableError("the openvino backend runs on cpu only; use --backend torch for cuda")
    if backend == "openvino" and not host.openvino:
        raise BackendUnavailableError("backend openvino requested but the openvino package is not installed")

    precision = engine.precision
    if precision == "auto":
        if device == "cuda":
            precision = "fp16"
        elif backend == "torch":
            precision = "fp32"  # the torch CPU fallback stays exact; bf16 autocast only when asked
            notes.append("torch cpu fallback keeps fp32")
        elif host.cpu_bf16_flag:
            precision = "bf16"
            notes.append(f"cpu with {host.cpu_bf16_flag}")
        else:
            precision = "fp32"
            notes.append("cpu without bf16 instructions")
    if device == "cpu" and precision == "fp16":
        raise BackendUnavailableError("fp16 is not supported on cpu; use --precision bf16 or fp32")
    if device == "cpu" and precision == "bf16" and not host.cpu_bf16_flag:
        raise BackendUnavailableError(
            "bf16 requested but this cpu has neither avx512_bf16 nor amx_bf16 (it would be emulated and "
            "slow); use --precision fp32"
        )
    if device == "cuda" and precision == "bf16" and not host.cuda_bf16:
        raise BackendUnavailableError(
            f"this GPU ({host.cuda_name}) has no bf16 support; use --precision fp16"
        )

    choice = f"{backend} {device} {precision}" if backend == "torch" else f"{backend} {precision}"
    why = ", ".join(notes) if notes else "as configured"
    return BackendInfo(backend=backend, device=device, precision=precision, reason=f"{why}: {choice}")


def load_upscaler(
    model_id: str,
    engine: EngineConfig,
    denoise_strength: float | None = None,
    host: HostCapabilities | None = None,
) -> Upscaler:
    """Load the model's weights (pipeline/weights.py) and wrap them in the chosen backend."""
    refuse_face_model(model_id, engine)
    info = choose_backend(engine, host or host_capabilities())
    log.info("model %s on %s (%s)", model_id, f"{info.backend}/{info.device}/{info.precision}", info.reason)
    if info.backend == "openvino":
        from pipeline.backends.openvino_backend import OpenVinoUpscaler

        return OpenVinoUpscaler(upscaler_ir(model_id, engine, denoise_strength), info, engine)
    from pipeline.backends.torch_backend import TorchUpscaler
    from pipeline.weights import load_model

    descriptor = load_model(model_id, Path(engine.weights_dir), Path(engine.cache_dir), denoise_strength)
    return TorchUpscaler(descriptor, info, engine)


def refuse_face_model(model_id: str, engine: EngineConfig) -> None:
    """A face network (built in or a user's file) restores 512 px face crops, not whole photos: as `model`
    it is refused, saying where it belongs."""
    from pipeline.models import get_spec

    spec = get_spec(model_id, engine.weights_dir, engine.cache_dir)
    if spec.purpose == "face":
        raise UnknownModelError(f"model {model_id} is a face model ({spec.arch}): choose it as face_model")


def upscaler_ir(model_id: str, engine: EngineConfig, denoise_strength: float | None = None) -> IrNetwork:
    """The model's IR from the cache, converted first (in a separate process) when it is not there yet:
    the one call that turns a model id (built-in or a user file) into what runs it, with its scale and its
    size needs (IrNetwork). A network the converter refused raises BackendUnavailableError with the reason.

    Named by the weights' sha256, so a replaced weights file gets its own IR; finding it imports no torch.
    A torch-free installation ships the embedded networks converted (pipeline/prebuilt.py): seeded first."""
    from pipeline.prebuilt import seed_cache
    from pipeline.weights import weights_key

    weights_dir, cache_dir = Path(engine.weights_dir), Path(engine.cache_dir)
    seed_cache(cache_dir)
    key = weights_key(model_id, weights_dir, cache_dir, denoise_strength)
    network = read_network(upscaler_xml(model_id, weights_dir, cache_dir, key)) if key is not None else None
    if network is not None:
        return network
    refusal = read_refusal(cache_dir, key) if key is not None else ""
    if refusal:
        raise BackendUnavailableError(f"model {model_id}: {refusal}")
    # Not converted yet (or the embedded weights not even unpacked): the converter process does both
    # and names the IR by the same key.
    job = Conversion(
        "upscaler", model_id, str(weights_dir), str(cache_dir), denoise_strength, module=__name__
    )
    convert_in_subprocess(job)
    key = weights_key(model_id, weights_dir, cache_dir, denoise_strength)
    network = read_network(upscaler_xml(model_id, weights_dir, cache_dir, key)) if key is not None else None
    if network is None:
        raise BackendUnavailableError(f"model {model_id}: the converter left no usable OpenVINO IR")
    return network


def upscaler_xml(model_id: str, weights_dir: Path, cache_dir: Path, key: str) -> Path:
    from pipeline.models import get_spec

    return ir_dir(cache_dir) / f"{get_spec(model_id, weights_dir, cache_dir).arch}-{key[:40]}-dynamic.xml"


def _convert_upscaler(job: Conversion) -> None:
    """The converter process's job for a super-resolution / restoration network (registered by kind).

    Free batch, height and width: tracing is the slow part, so it happens once per weights, and each tile
    shape is cut from this IR without torch. A network OpenVINO cannot convert, or converts into something
    that computes another result than torch, is refused (and remembered), never run slowly on torch CPU."""
    from pipeline.weights import load_model_with_key

    weights_dir, cache_dir = Path(job.weights_dir), Path(job.cache_dir)
    descriptor, key = load_model_with_key(job.model_id, weights_dir, cache_dir, job.denoise_strength)
    try:
        model, multiple = convert_image_network(descriptor)
    except Exception as error:  # OpenVINO's and torch's conversion errors have no common base
        words = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        reason = (
            f"OpenVINO cannot run this {descriptor.architecture.id} network ({words}); "
            "refused rather than run slowly on torch CPU"
        )
        write_refusal(cache_dir, key, reason)
        raise BackendUnavailableError(reason) from None
    needs = descriptor.size_requirements
    record = {
        "architecture": descriptor.architecture.id,
        "scale": int(descriptor.scale),
        "size_multiple": multiple,  # spandrel's, or the one the converted graph was found to need
        "size_minimum": int(needs.minimum),
        "size_square": bool(needs.square),
    }
    save_ir(model, upscaler_xml(job.model_id, weights_dir, cache_dir, key), record)


register_converter("upscaler", _convert_upscaler)
