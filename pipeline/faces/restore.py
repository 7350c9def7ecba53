"""Face restoration networks on the same backend choices as super-resolution.

Models (pipeline/models.py REGISTRY, loaded by pipeline/weights.py through spandrel, never downloaded):
GFPGAN v1.4 / v1.3 (clean architecture) and RestoreFormer; CodeFormer only when asked for by name
(non-commercial, needs spandrel_extra_arches). "auto" = the best one present: GFPGANv1.4 > GFPGANv1.3 >
RestoreFormer. A user's face network file in the weights folder (a GFPGAN, RestoreFormer or CodeFormer
spandrel recognises, pipeline/user_models.py) runs when face_model names its id (the file stem); the
wrapper, CodeFormer's fidelity and the IR's name follow its detected architecture, never its id.

Every network is wrapped so it maps a [0,1] RGB 512x512 crop to a [0,1] crop:
- GFPGAN and CodeFormer work in [-1,1] (calling spandrel's descriptor on [0,1] input is a known pitfall);
- GFPGAN's StyleGAN decoder adds fresh random noise on every call by default: we pass
  randomize_noise=False so it uses the noise buffers stored in the weight file (same input, same output);
- GFPGAN's `weight` argument is a no-op in v1.2-1.4: strength is a blend done at paste time.

Backends: CUDA -> torch with bf16 autocast (fp16 when the GPU lacks bf16; a non-finite result is redone in
fp32). CPU -> FACE_CPU_AUTO, chosen by measurement (benchmarks/bench_faces.py, docs/performance.md): the
fastest engine whose output stays within 40 dB of torch fp32 on a real face.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.base import BackendInfo, available_cores
from pipeline.backends.ir import (
    Conversion,
    agreement_with_torch,
    compile_ir,
    convert_in_subprocess,
    ir_dir,
    new_core,
    read_network,
    register_converter,
    save_ir,
    torch_to_ov,
)
from pipeline.models import ModelSpec, get_spec
from pipeline.types import BackendUnavailableError, EngineConfig, UnknownModelError

if TYPE_CHECKING:
    import torch
    from spandrel import ModelDescriptor

log = logging.getLogger(__name__)

AUTO_ORDER = ("GFPGANv1.4", "GFPGANv1.3", "RestoreFormer")
CROP = 512
# Measured on the 2-core avx512_bf16 CPU with a 512 face (see docs/performance.md, "## Faces").
FACE_CPU_AUTO = ("openvino", "bf16")
# A face network's conversion is kept only this close to torch in fp32 (a correct one is far above it; the
# same bar as the CPU engines' choice above, which is about precision, not a wrong graph).
FACE_CHECK_DB = 40.0


def missing_restoration_reason(weights_dir: Path) -> str:
    spec = get_spec(AUTO_ORDER[0])
    return (
        f"face restoration unavailable: add {spec.filenames[0]} to {weights_dir}/ "
        f"(from {spec.source_url}; GFPGANv1.3.pth or RestoreFormer.pth also work)"
    )


def builtin_face_models_present(weights_dir: Path) -> list[str]:
    """The built-in face models whose weights are present (CodeFormer listed too; used only on request)."""
    from pipeline.models import face_models

    # Face weights are never embedded, so "present" is "a file under one of the accepted names": checked
    # without hashing 350 MB files (status() runs for every health request).
    return [spec.id for spec in face_models() if any((weights_dir / n).is_file() for n in spec.filenames)]


def user_face_models(weights_dir: Path, cache_dir: Path | None = None) -> list[str]:
    """The user's face network files in the weights folder that spandrel recognised (pipeline/user_models.py:
    detected once per file, remembered by name, size and mtime), by id."""
    from pipeline.user_models import scan_user_models

    files = scan_user_models(weights_dir, cache_dir)
    return [entry.id for entry in files if entry.spec is not None and entry.spec.purpose == "face"]


def available_face_models(weights_dir: Path, cache_dir: Path | None = None) -> list[str]:
    """Face models that can be chosen as face_model: the built-in ones present, then the user's files."""
    return [*builtin_face_models_present(weights_dir), *user_face_models(weights_dir, cache_dir)]


def choose_face_model(
    requested: str, weights_dir: Path, cache_dir: Path | None = None
) -> tuple[ModelSpec | None, str | None]:
    """(the face model's spec, None) when a usable face model exists for the request, else (None, the
    reason in words). `requested` is "auto", a built-in face model's id or a user face file's id."""
    if requested == "auto":
        # Only the built-in models, best first: a user file's quality is unknown (a fine-tune, an
        # experiment, a half-trained network), so it runs only where someone names it.
        present = builtin_face_models_present(weights_dir)
        for model_id in AUTO_ORDER:
            if model_id in present:
                return get_spec(model_id), None
        return None, missing_restoration_reason(weights_dir)
    try:
        spec = get_spec(requested, weights_dir, cache_dir)  # a user file of the weights folder too
    except UnknownModelError as error:  # its message lists the known ids, or why the user file was refused
        return None, f"face restoration unavailable: {error}"
    if spec.purpose != "face":
        kind = f"{spec.arch} x{spec.scale}, {spec.purpose}"
        return None, f"face restoration unavailable: {requested} is not a face model ({kind})"
    if not spec.user and requested not in builtin_face_models_present(weights_dir):
        where = f"{weights_dir}/ (from {spec.source_url})"
        return None, f"face restoration unavailable: add {spec.filenames[0]} to {where}"
    return spec, None


def face_fidelity(spec: ModelSpec, codeformer_fidelity: float) -> float:
    """The fidelity weight the network gets: CodeFormer's w for any CodeFormer (built in or a user's file:
    the architecture decides, not the id); 0 for the others, which have none (one IR for every value)."""
    return float(codeformer_fidelity) if spec.arch == "CodeFormer" else 0.0


def face_module(descriptor: ModelDescriptor, arch: str, fidelity: float) -> torch.nn.Module:
    """The face network as a module mapping a [0,1] crop to a [0,1] crop (what both backends run)."""
    import torch

    class FaceNetwork(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = descriptor.model.eval()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            signed = x * 2.0 - 1.0
            if arch == "GFPGAN":
                y = self.net(signed, return_rgb=False, randomize_noise=False)[0]
            elif arch == "CodeFormer":
                # spandrel_extra_arches' CodeFormer.forward(x, weight=0.5, **kwargs): AdaIN always on; any
                # other keyword (the reference's `w`) would be swallowed silently.
                y = self.net(signed, weight=fidelity)[0]
            else:  # RestoreFormer: spandrel's own call_fn does the same normalisation
                y = self.net(signed)[0]
            return ((y + 1.0) / 2.0).clamp(0.0, 1.0)

    return FaceNetwork().eval()


def choose_face_backend(engine: EngineConfig) -> BackendInfo:
    """Like super-resolution's choice, except what CPU 'auto' means (measured for faces)."""
    from pipeline.backends import choose_backend, host_capabilities

    host = host_capabilities()
    info = choose_backend(engine, host)
    if info.device == "cuda":
        if engine.precision == "auto":
            precision = "bf16" if host.cuda_bf16 else "fp16"
            return BackendInfo("torch", "cuda", precision, f"cuda: torch {precision} autocast")
        return info
    backend, precision = info.backend, info.precision
    if engine.backend == "auto":
        backend = FACE_CPU_AUTO[0] if host.openvino else "torch"
    if engine.precision == "auto":
        precision = FACE_CPU_AUTO[1] if host.cpu_bf16_flag else "fp32"
    reason = f"faces on cpu: {backend} {precision} (fastest within 40 dB of fp32, measured)"
    return BackendInfo(backend, "cpu", precision, reason)


class TorchFaceRunner:
    def __init__(self, module: torch.nn.Module, info: BackendInfo, engine: EngineConfig) -> None:
        import torch

        self.info = info
        self._device = torch.device(info.device)
        if self._device.type == "cpu":
            torch.set_num_threads(engine.threads or available_cores())
        self._module = module.to(self._device)

    def _run(self, crop: np.ndarray, precision: str) -> np.ndarray:
        import torch

        from pipeline.backends.torch_backend import autocast

        with torch.inference_mode(), autocast(self._device.type, precision):
            x = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None].to(self._device)
            y = self._module(x).float()
        return y[0].permute(1, 2, 0).cpu().numpy()

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        out = self._run(crop, self.info.precision)
        if not np.isfinite(out).all() and self.info.precision != "fp32":
            # Half precision overflowed (the GTX 16xx "black output" class of bug): redo this face in fp32.
            log.warning("face network gave non-finite values in %s; redoing it in fp32", self.info.precision)
            out = self._run(crop, "fp32")
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


class OpenVinoFaceRunner:
    """The face network's IR (pipeline/backends/ir.py: converted once, in a separate process) compiled for
    1x3x512x512 with pinned precision and threads. Imports no torch."""

    def __init__(self, xml: Path, info: BackendInfo, engine: EngineConfig) -> None:
        self.info = info
        core = new_core(engine.cache_dir)
        threads = engine.threads or available_cores()
        self._request = compile_ir(core, xml, info.precision, threads).create_infer_request()

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)
        self._request.infer({0: x})
        out = self._request.get_output_tensor(0).data[0].transpose(1, 2, 0)
        return np.clip(out, 0.0, 1.0).astype(np.float32, copy=True)


@dataclass
class FaceRestorer:
    """One loaded face network: crop (512x512x3 float32 [0,1]) -> restored crop, deterministic."""

    model_id: str
    info: BackendInfo
    runner: TorchFaceRunner | OpenVinoFaceRunner

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        return self.runner(crop)


def load_face_restorer(model_id: str, engine: EngineConfig, fidelity: float = 0.5) -> FaceRestorer:
    """Load `model_id` onto the chosen face backend: OpenVINO from its cached IR (converted first, in a
    separate process, when new), or torch through pipeline.weights (spandrel)."""
    info = choose_face_backend(engine)
    fidelity = face_fidelity(get_spec(model_id, engine.weights_dir, engine.cache_dir), fidelity)
    if info.backend == "openvino":
        try:
            return FaceRestorer(
                model_id, info, OpenVinoFaceRunner(face_ir(model_id, engine, fidelity), info, engine)
            )
        except (BackendUnavailableError, RuntimeError) as error:  # an architecture OpenVINO cannot express
            # Without torch (the torch-free image) there is nothing to fall back on: say so, do not crash.
            if engine.backend == "openvino" or importlib.util.find_spec("torch") is None:
                raise BackendUnavailableError(f"{model_id} cannot run on openvino: {error}") from error
            log.warning("%s on openvino failed (%s); using torch instead", model_id, error)
            reason = f"{info.reason}; openvino failed for {model_id}, torch {info.precision} instead"
            info = BackendInfo("torch", "cpu", info.precision, reason)
    from pipeline.weights import load_model

    descriptor = load_model(model_id, Path(engine.weights_dir), Path(engine.cache_dir))
    module = face_module(descriptor, descriptor.architecture.id, fidelity)
    return FaceRestorer(model_id, info, TorchFaceRunner(module, info, engine))


def face_xml(arch: str, cache_dir: Path, key: str, fidelity: float) -> Path:
    """Where a face network's IR lives: named by architecture, weights sha256 (and CodeFormer's fidelity,
    which is baked into the converted graph). Not by id: a user's file and a built-in one with the same
    bytes share one IR, and a renamed file keeps its own."""
    suffix = f"-w{fidelity:.3f}" if arch == "CodeFormer" else ""
    return ir_dir(cache_dir) / f"face-{arch}-{key[:32]}{suffix}-1x3x{CROP}x{CROP}.xml"


def face_ir(model_id: str, engine: EngineConfig, fidelity: float) -> Path:
    """The face network's IR from the cache, converted first (in a separate process) when it is not there."""
    from pipeline.prebuilt import seed_cache
    from pipeline.weights import weights_key

    weights_dir, cache_dir = Path(engine.weights_dir), Path(engine.cache_dir)
    seed_cache(cache_dir)
    key = weights_key(model_id, weights_dir, cache_dir)
    if key is None:  # face weights are never embedded: a user file or WeightsMissingError
        raise BackendUnavailableError(f"{model_id}: no weights key")
    xml = face_xml(get_spec(model_id, weights_dir, cache_dir).arch, cache_dir, key, fidelity)
    if read_network(xml) is None:
        convert_in_subprocess(
            Conversion("face", model_id, str(weights_dir), str(cache_dir), fidelity=fidelity, module=__name__)
        )
    if read_network(xml) is None:
        raise BackendUnavailableError(f"{model_id}: the converter left no usable OpenVINO IR at {xml.name}")
    return xml


def _convert_face(job: Conversion) -> None:
    """The converter process's job for a face network (registered with ir.py by kind)."""
    from pipeline.weights import load_model_with_key

    descriptor, key = load_model_with_key(job.model_id, Path(job.weights_dir), Path(job.cache_dir))
    architecture = descriptor.architecture.id
    module = face_module(descriptor, architecture, job.fidelity)
    # A static input shape: StyleGAN's modulated convolutions have batch-dependent weight shapes that
    # OpenVINO's CPU plugin cannot run when left dynamic.
    shape = [1, 3, CROP, CROP]
    model = torch_to_ov(module, shape, shape, trace=False)
    # Never keep a conversion that computes something else (a user's file of an architecture variant the
    # converter mishandles): without an IR the face stage says so and runs torch, or refuses without it.
    agreement = agreement_with_torch(module, model, shape)
    if agreement < FACE_CHECK_DB:
        raise ValueError(
            f"{job.model_id}: the OpenVINO conversion differs from torch ({agreement:.1f} dB on a test crop, "
            f"below {FACE_CHECK_DB:.0f} dB)"
        )
    xml = face_xml(architecture, Path(job.cache_dir), key, job.fidelity)
    save_ir(model, xml, {"architecture": architecture, "scale": 1, "size_multiple": 1})


register_converter("face", _convert_face)
