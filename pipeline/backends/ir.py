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

import importlib.metadata
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import time
import warnings
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
        return IrNetwork(xml, str(record["architecture"]), int(record["scale"]), int(record["size_multiple"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    entry = (
        "import sys; from pipeline.backends.ir import converter_main; sys.exit(converter_main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", entry, json.dumps(asdict(job))]
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


def _convert_upscaler(job: Conversion) -> None:
    from pipeline.backends import upscaler_xml
    from pipeline.weights import load_model_with_key

    cache_dir = Path(job.cache_dir)
    descriptor, key = load_model_with_key(
        job.model_id, Path(job.weights_dir), cache_dir, job.denoise_strength
    )
    record = {
        "architecture": descriptor.architecture.id,
        "scale": int(descriptor.scale),
        "size_multiple": int(descriptor.size_requirements.multiple_of),
    }
    # Free batch, height and width: tracing is the slow part, so it happens once per weights, and each
    # tile shape is cut from this IR without torch.
    model = torch_to_ov(descriptor.model.eval(), [1, 3, 32, 32], [-1, 3, -1, -1], trace=True)
    save_ir(model, upscaler_xml(job.model_id, cache_dir, key), record)


def _convert_face(job: Conversion) -> None:
    from pipeline.faces.restore import CROP, face_module, face_xml
    from pipeline.weights import load_model_with_key

    descriptor, key = load_model_with_key(job.model_id, Path(job.weights_dir), Path(job.cache_dir))
    architecture = descriptor.architecture.id
    module = face_module(descriptor, architecture, job.fidelity)
    # A static input shape: StyleGAN's modulated convolutions have batch-dependent weight shapes that
    # OpenVINO's CPU plugin cannot run when left dynamic.
    shape = [1, 3, CROP, CROP]
    model = torch_to_ov(module, shape, shape, trace=False)
    xml = face_xml(job.model_id, Path(job.cache_dir), key, job.fidelity)
    save_ir(model, xml, {"architecture": architecture, "scale": 1, "size_multiple": 1})


def _convert_mtcnn(job: Conversion) -> None:
    from pipeline.faces.mtcnn import convert_mtcnn

    convert_mtcnn(Path(job.cache_dir))


_CONVERTERS = {"upscaler": _convert_upscaler, "face": _convert_face, "mtcnn": _convert_mtcnn}


def converter_main(argv: list[str]) -> int:
    """The converter process: one Conversion as JSON in argv[0]; exit 1 with the error's one line."""
    logging.basicConfig(level=logging.WARNING)
    job = Conversion(**json.loads(argv[0]))
    try:
        _CONVERTERS[job.kind](job)
    except RestoreError as error:  # one line the parent turns back into the same error type
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0
