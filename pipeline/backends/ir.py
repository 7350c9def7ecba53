"""OpenVINO IR on disk: the one home for how a network becomes a compiled OpenVINO model.

    weights file --(once, in a short-lived converter process that imports torch)--> IR in
    <cache_dir>/openvino/ir, named by the weights' sha256, with a JSON record of what the network is
    --(every process, no torch)--> read + compile with pinned precision and threads; OpenVINO keeps the
    compiled blob in <cache_dir>/openvino/compiled/<generation>, so a restarted worker neither converts
    nor recompiles, and blobs of earlier generations are deleted (the disk holds one generation's set).

Converting needs torch, spandrel and torchvision (~750 MB and 1.5 s of imports), running does not: the
conversion runs as `python -m pipeline.backends.ir JOB` in its own process, so the worker that asked for it
never holds torch. A subprocess, not multiprocessing: the daemon's worker is a daemonic process, which
multiprocessing does not allow to have children.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipeline.files import atomic_target, write_text_atomically
from pipeline.types import BackendUnavailableError, RestoreError, WeightsMissingError

if TYPE_CHECKING:
    import openvino as ov
    import torch

log = logging.getLogger(__name__)

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
CONVERT_TIMEOUT_S = 1800  # RRDBNet traces in 10-70 s on 2 cores; GFPGAN takes longer
Kind = Literal["upscaler", "face", "mtcnn"]
# `python -c`, not `-m pipeline.backends.ir`: the package imports this module first, which -m warns about.
_CONVERTER_ENTRY = (
    "import sys; from pipeline.backends.ir import converter_main; sys.exit(converter_main(sys.argv[1:]))"
)


@dataclass(frozen=True)
class IrNetwork:
    """A converted network as the runtime sees it: its IR and what its record says about it."""

    xml: Path
    architecture: str  # spandrel's id: "ESRGAN", "Compact", "GFPGAN", ... or "MTCNN"
    scale: int
    size_multiple: int  # input H and W must be multiples of this (x2plus's pixel unshuffle: 2)
    size_minimum: int = 0  # input H and W must be at least this (SCUNet: 40; transformers: their window)
    size_square: bool = False  # input must be square (Uformer)


@dataclass(frozen=True)
class Conversion:
    """One job for the converter process (JSON on its command line); the IR's name comes from the same
    functions the runtime uses to find it."""

    kind: Kind
    model_id: str = ""  # "" for MTCNN
    weights_dir: str = ""
    cache_dir: str = ""
    denoise_strength: float | None = None
    fidelity: float = 0.0  # CodeFormer only
    module: str = ""  # the module that registers the converter for `kind`, imported by the converter process


# kind -> the function that converts it, registered by the module that owns that kind of network (the
# upscaler in pipeline.backends, faces in pipeline.faces): this module never imports its callers.
Converter = Callable[[Conversion], None]
_CONVERTERS: dict[str, Converter] = {}


def register_converter(kind: Kind, converter: Converter) -> None:
    _CONVERTERS[kind] = converter


# -- paths and records -------------------------------------------------------------------------------------


def ir_dir(cache_dir: Path | str) -> Path:
    return Path(cache_dir) / "openvino" / "ir"


# OpenVINO names each compiled blob by a hash of the graph, the configuration and its own version, and
# never reads a blob of an earlier version or of a graph this code no longer builds. So every (OpenVINO
# version, BLOB_GENERATION) gets a folder of its own and new_core deletes the others: upgrades do not pile
# up blobs of 67 MB each. Bump BLOB_GENERATION when the graphs compiled from an IR change (a rewrite, a
# different split, another cache mode). 3: parts compiled from their own IR files, weightless blobs.
BLOB_GENERATION = 3


def compiled_dir(cache_dir: Path | str) -> Path:
    version = importlib.metadata.version("openvino")
    return Path(cache_dir) / "openvino" / "compiled" / f"openvino-{version}-g{BLOB_GENERATION}"


def remove_other_generations(current: Path) -> None:
    """Delete what sits beside `current` in the compiled folder: blobs no process of this version reads."""
    if not current.parent.is_dir():
        return
    for entry in current.parent.iterdir():
        if entry == current:
            continue
        log.info("removing compiled models of an earlier version: %s", entry.name)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def ir_ready(xml: Path) -> bool:
    """Complete IR: save_ir renames the .bin before the .xml, so an .xml means both are whole."""
    return xml.is_file() and xml.with_suffix(".bin").is_file()


def read_network(xml: Path) -> IrNetwork | None:
    """The IR and its record, or None when either is missing or unreadable (then: convert again)."""
    record_path = xml.with_suffix(".json")
    if not ir_ready(xml) or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
        return IrNetwork(
            xml,
            str(record["architecture"]),
            int(record["scale"]),
            int(record["size_multiple"]),
            int(record.get("size_minimum", 0)),
            bool(record.get("size_square", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _refusal_path(cache_dir: Path, key: str) -> Path:
    return ir_dir(cache_dir) / f"refused-{key[:40]}.json"


def write_refusal(cache_dir: Path, key: str, reason: str) -> None:
    """Remember that the network with these weights cannot be converted, so each job does not try again."""
    write_text_atomically(_refusal_path(cache_dir, key), json.dumps({"reason": reason}))


def read_refusal(cache_dir: Path, key: str) -> str:
    """Why the network with these weights was refused by the converter, or "" (never tried, or fine)."""
    try:
        return str(json.loads(_refusal_path(cache_dir, key).read_text())["reason"])
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def save_ir(model: ov.Model, xml: Path, record: dict[str, Any] | None = None) -> None:
    """Save under temporary names, then rename the .bin before the .xml (an .xml means complete) and
    the record last (a record means the IR it describes is complete)."""
    import openvino as ov

    with atomic_target(xml) as temporary:
        ov.save_model(model, temporary, compress_to_fp16=False)  # the default would round weights to fp16
        temporary.with_suffix(".bin").replace(xml.with_suffix(".bin"))
    if record is not None:
        write_text_atomically(xml.with_suffix(".json"), json.dumps(record, indent=2))


# -- compiling (every process) -----------------------------------------------------------------------------


def new_core(cache_dir: Path | str) -> ov.Core:
    import openvino as ov

    folder = compiled_dir(cache_dir)
    remove_other_generations(folder)
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(folder)})
    return core


def compile_config(precision: str, threads: int) -> dict[str, Any]:
    # Pinned: OpenVINO would otherwise pick bf16 by itself on AMX / avx512_bf16 hosts, making the output
    # depend on the machine, and as many threads as it sees rather than the cores we may use.
    # OPTIMIZE_SIZE: the compiled blob holds no weights (they are read from the IR's .bin, which stays
    # beside it): x4plus's trunk blob is 2.7 MB instead of 69 MB, with the same load time and RSS
    # (measured side by side, docs/performance.md). Every network is compiled from its IR file's path.
    return {
        "INFERENCE_PRECISION_HINT": OV_PRECISION[precision],
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "CACHE_MODE": "OPTIMIZE_SIZE",
    }


def compile_ir(core: ov.Core, xml: Path, precision: str, threads: int) -> ov.CompiledModel:
    started = time.monotonic()
    compiled = core.compile_model(str(xml), "CPU", compile_config(precision, threads))
    log.info(
        "compiled %s (%s, %d threads) in %.1f s", xml.name, precision, threads, time.monotonic() - started
    )
    return compiled


# -- converting (in the converter process) -----------------------------------------------------------------


def convert_in_subprocess(job: Conversion, timeout_s: float = CONVERT_TIMEOUT_S) -> None:
    """Run one conversion in a fresh interpreter; its errors come back as the pipeline's own types."""
    started = time.monotonic()
    what = job.model_id or job.kind
    if importlib.util.find_spec("torch") is None:
        # The torch-free container image: its daemon runs IR but cannot make it.
        raise BackendUnavailableError(
            f"converting {what} to OpenVINO IR needs torch, which is not installed here: run "
            "`restorer weights convert` where it is (container: `docker compose run --rm converter`)"
        )
    command = [sys.executable, "-c", _CONVERTER_ENTRY, json.dumps(asdict(job))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise BackendUnavailableError(f"converting {what} took over {timeout_s:.0f} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else f"exit code {done.returncode}"
        missing = last.startswith("WeightsMissingError")
        error_type = WeightsMissingError if missing else BackendUnavailableError
        raise error_type(f"converting {what} failed: {last.split(': ', 1)[-1]}")
    seconds = time.monotonic() - started
    log.info("converted %s to OpenVINO IR in %.1f s (separate process)", what, seconds)


def torch_to_ov(
    module: torch.nn.Module, example_shape: list[int], input_shape: list[int], trace: bool
) -> ov.Model:
    """Convert a torch module. trace=True goes through torch.jit.trace first: OpenVINO's PyTorch frontend
    converts a traced RRDBNet fastest and most completely; check_trace=False skips a second full trace
    that only doubles the time for these static, branch-free networks."""
    import openvino as ov
    import torch

    example = torch.zeros(example_shape)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # Tracing warns about Python control flow and torch.jit.trace's deprecation: noise for these nets.
        warnings.simplefilter("ignore")
        source = torch.jit.trace(module, example, check_trace=False) if trace else module
        return ov.convert_model(source, example_input=example, input=[input_shape])


# The converted network must compute what torch computes, to within a fraction of an 8-bit level.
CHECK_TOLERANCE = 0.5 / 255


def agreement_with_torch(module: Any, model: ov.Model, shape: list[int]) -> float:
    """PSNR (dB) of the converted model's fp32 output against the torch module's, on a seeded random input
    of `shape` (for fixed-shape networks: the face crops)."""
    expected, actual = _outputs_on_a_sample(module, model, shape)
    mse = float(((actual - expected) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


# Size multiples tried, in order, for a network whose trace holds on only to sizes of some multiple: window
# transformers (SwinIR, HAT) pad themselves to their window in Python, which tracing bakes in for the example.
MULTIPLES_TRIED = (1, 8, 16, 32, 64)


def convert_image_network(descriptor: Any) -> tuple[ov.Model, int]:
    """A spandrel image descriptor as a dynamic-shape OpenVINO model (free batch, height and width) and the
    size multiple its input needs, checked against torch on an input of ANOTHER size than the traced one:
    a network whose trace baked in its example's shape (an attention mask, a window padding) is converted
    again for sizes of a multiple it holds on to, and refused when none works (ValueError/RuntimeError).

    The module traced is the descriptor's own call (FBCNN's returns the image of an (image, quality)
    pair), at the smallest friendly size its size requirements allow (SCUNet needs 40 px)."""
    needs = descriptor.size_requirements
    module = _descriptor_module(descriptor).eval()
    failures = []
    for multiple in sorted({needs.multiple_of * m for m in MULTIPLES_TRIED}):
        try:
            return _convert_checked(module, needs, multiple), multiple
        except Exception as error:  # conversion, compilation or inference error, or a wrong result
            words = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            failures.append(f"sizes of multiple {multiple}: {words}")
    raise ValueError("; ".join(failures[:2]))


def _convert_checked(module: Any, needs: Any, multiple: int) -> ov.Model:

    side = _round_up(max(32, needs.minimum), multiple)
    model = torch_to_ov(module, [1, 3, side, side], [-1, 3, -1, -1], trace=True)
    height = side + _round_up(5, multiple)
    width = height if needs.square else side + _round_up(11, multiple)
    expected, actual = _outputs_on_a_sample(module, model, [1, 3, height, width])
    if actual.shape != expected.shape:
        raise ValueError(f"on a {height}x{width} input it returned {actual.shape}, torch {expected.shape}")
    difference = float(abs(actual - expected).max())
    if difference > CHECK_TOLERANCE:
        raise ValueError(f"on a {height}x{width} input its output differs from torch's by {difference:.3f}")
    return model


def _outputs_on_a_sample(module: Any, model: ov.Model, shape: list[int]) -> tuple[Any, Any]:
    """(torch's output, the converted model's fp32 output), both clipped to [0, 1], on one seeded random
    input of `shape`: what every conversion check compares."""
    import openvino as ov
    import torch

    sample = torch.rand(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(sample).clamp(0, 1).numpy()
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return expected, compiled(sample.numpy())[0].clip(0, 1)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _descriptor_module(descriptor: Any) -> Any:
    import torch

    class DescriptorCall(torch.nn.Module):
        """descriptor.model called the way spandrel calls it (without its padding and clamping)."""

        def __init__(self) -> None:
            super().__init__()
            self.network = descriptor.model
            self._call = descriptor._call_fn  # spandrel keeps the per-architecture call private

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self._call(self.network, image)

    return DescriptorCall()


def converter_main(argv: list[str]) -> int:
    """The converter process: one Conversion as JSON in argv[0]; exit 1 with the error's one line."""
    logging.basicConfig(level=logging.WARNING)
    job = Conversion(**json.loads(argv[0]))
    if job.module:
        importlib.import_module(job.module)  # registers its converters
    try:
        _CONVERTERS[job.kind](job)
    except RestoreError as error:  # one line the parent turns back into the same error type
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0
