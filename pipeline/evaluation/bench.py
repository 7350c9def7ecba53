"""Timings behind `restorer bench`: each measurement runs in its own worker process, so its peak RSS is
that of one process doing one job (model loaded, image restored) and nothing else.

Stages:
    sr        Restorer.restore with faces off: the super-resolution stage (tiling, network, assembly)
    faces     FaceStage.prepare + paste on the same input (detection, restoration when face weights exist)
    pipeline  end to end: JPEG bytes -> restore_bytes (decode, Restorer.restore with default options,
              faces on, encode as JPEG): the path the daemon's worker takes

Seconds exclude model loading and compilation (reported separately as load_s; the worker warms up
first; inputs up to 320x320 also get one untimed first call, reported as first_call_s). GFLOP/s counts
the SR network's useful work: FLOP per input pixel (counted on the real model) x input pixels /
seconds; context overlap between tiles is overhead, not credited.

Efficiency = that useful GFLOP/s / the GEMM rate measured on this machine with the same threads (a
4096x4096 torch matmul in the precision the network runs in: bf16 where the CPU has bf16 dot products):
a ratio that means the same on a 2-core Zen 4 and on a Xeon with AMX, unlike a theoretical peak.

Run a worker by hand: python -m pipeline.evaluation.bench '{"stage": "sr", "width": 64, ...}'
Measure the GEMM rate by hand: python -m pipeline.evaluation.bench --gemm bf16 2
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pipeline.types import EngineConfig

STAGES = ("sr", "faces", "pipeline")
SEED_SIZES = [(546, 729), (364, 358), (320, 320)]  # the seed README's three photos
SWEEP_SIZES = [(64, 64), (128, 128), (256, 256)]
SIZE_GROUPS = {
    "sweep": SWEEP_SIZES,
    "seed": SEED_SIZES,
    "full": [*SWEEP_SIZES, (512, 512), *SEED_SIZES],
}
# Clock of this project's reference 2-core EPYC under sustained load (shared/notes/cpu-performance.md).
# /proc/cpuinfo reports the nominal clock on many VMs. Only the theoretical peaks use it; efficiency is
# measured against a GEMM run on the machine itself (measure_gemm).
DEFAULT_CPU_GHZ = 3.55
WORKER_TIMEOUT_S = 3600
SMALL_INPUT_PIXELS = 320 * 320  # up to here one untimed first call runs before the timed ones


@dataclass(frozen=True)
class BenchSpec:
    stage: str
    width: int
    height: int
    model: str
    engine: dict[str, Any]  # EngineConfig as a dict
    repeats: int = 1
    image: str | None = None  # photo to crop/resize to the size; None: a built-in test photo


@dataclass
class Measurement:
    spec: BenchSpec
    seconds: list[float] = field(default_factory=list)
    load_s: float = 0.0
    first_call_s: float | None = None  # untimed warm-up call on small inputs (see SMALL_INPUT_PIXELS)
    peak_rss_mb: float = 0.0
    backend: str = ""
    device: str = ""
    precision: str = ""
    tiles: int = 0
    faces_found: int = 0
    faces_restored: int = 0
    notes: list[str] = field(default_factory=list)
    hardware: str = ""  # "gpu: <name>" when it ran on CUDA; the parent fills in the CPU's description
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")

    @property
    def megapixels(self) -> float:
        return self.spec.width * self.spec.height / 1e6

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["median_s"] = self.median_s
        return data


@dataclass(frozen=True)
class GemmRate:
    """A square matmul's rate on this machine: the yardstick for efficiency."""

    dtype: str  # "bf16" | "fp16" | "fp32"
    threads: int
    size: int
    gflops: float
    device: str = "cpu"  # "cpu" | "cuda": the yardstick of rows that ran there

    def describe(self) -> str:
        plural = "s" if self.threads != 1 else ""
        where = "on the GPU" if self.device == "cuda" else f"{self.threads} thread{plural}"
        matmul = f"torch {self.size}x{self.size} matmul"
        return f"{self.dtype} GEMM {self.gflops:.0f} GFLOP/s ({matmul}, {where}, measured now)"

    def measures(self, m: Measurement) -> bool:
        """Whether this rate is the yardstick of a row: same device kind, same precision family."""
        device = "cuda" if m.hardware.startswith("gpu:") else "cpu"
        return device == self.device and gemm_dtype_for(m.precision, device) == self.dtype


@dataclass(frozen=True)
class CpuPeaks:
    description: str  # e.g. "cpu: AMD EPYC, 2 cores, avx512_bf16" (also matched by the price list)
    fp32_gflops: float
    bf16_gflops: float | None  # None: no bf16 dot-product instructions
    formula: str


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'sweep', 'seed', 'full' or a comma list of WxH, mixable: 'seed,1024x768'."""
    sizes: list[tuple[int, int]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part in SIZE_GROUPS:
            sizes += SIZE_GROUPS[part]
            continue
        match = re.fullmatch(r"(\d+)x(\d+)", part)
        if not match or int(match[1]) < 16 or int(match[2]) < 16:
            raise ValueError(f"size {part!r} is not WxH (each >= 16) nor one of {', '.join(SIZE_GROUPS)}")
        sizes.append((int(match[1]), int(match[2])))
    return list(dict.fromkeys(sizes))


def cpu_peaks(ghz: float = DEFAULT_CPU_GHZ) -> CpuPeaks:
    """Theoretical peak = cores x FLOP/cycle x clock. 32 fp32 FLOP/cycle/core = two 256-bit FMA pipes
    (Zen 4 runs AVX-512 on them); bf16 dot products (avx512_bf16 / AMX) double it."""
    from pipeline.backends.base import available_cores, cpu_bf16_flag, cpu_flags

    flags = cpu_flags()
    cores = available_cores()
    per_cycle = 32 if ("avx512f" in flags or {"avx2", "fma"} <= flags) else 16 if "avx" in flags else 8
    fp32 = cores * per_cycle * ghz
    bf16_flag = cpu_bf16_flag(flags)
    model = _cpu_model_name()
    description = f"cpu: {model}, {cores} cores, {bf16_flag or 'no bf16'}"
    formula = f"{cores} cores x {per_cycle} FLOP/cycle x {ghz:g} GHz"
    return CpuPeaks(description, fp32, 2 * fp32 if bf16_flag else None, formula)


GEMM_SIZE = 4096
GPU_GEMM_SIZE = 8192  # a GPU needs a bigger product to reach its rate
GEMM_REPEATS = 5


def measure_gemm(
    dtype: str, threads: int, size: int | None = None, timeout_s: float = 600, device: str = "cpu"
) -> GemmRate:
    """Best of GEMM_REPEATS timed size x size matmuls in a fresh process with `threads` threads (its own
    process: the caller's RSS and thread settings stay untouched); device "cuda" times it on GPU 0."""
    size = size or (GPU_GEMM_SIZE if device == "cuda" else GEMM_SIZE)
    module = "pipeline.evaluation.bench"
    command = [sys.executable, "-m", module, "--gemm", dtype, str(threads), str(size), device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
    return GemmRate(dtype, threads, size, float(done.stdout.strip().splitlines()[-1]), device)


def _gemm_worker(dtype: str, threads: int, size: int, device: str = "cpu") -> float:
    import torch

    torch.set_num_threads(threads)
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    # Random operands: zeros run faster than real data on some GPUs.
    a = torch.randn(size, size, device=device).to(torch_dtype)
    b = torch.randn(size, size, device=device).to(torch_dtype)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3 if device == "cuda" else 1):  # oneDNN / cuBLAS pick and JIT their kernel first
        torch.mm(a, b)
    sync()
    best = math.inf
    for _ in range(GEMM_REPEATS):
        began = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best / 1e9


def threads_for(engine: Any) -> int:
    """The threads the engine runs with: the GEMM yardstick uses the same number."""
    from pipeline.backends.base import available_cores

    return int(engine.threads or available_cores())


def gemm_dtype_for(precision: str, device: str = "cpu") -> str:
    """The GEMM that matches a network precision: bf16 runs on bf16 dot products, the rest on fp32 FMA;
    on a GPU fp16 runs on its own tensor-core rate."""
    if precision == "bf16" or (device == "cuda" and precision == "fp16"):
        return precision
    return "fp32"


def yardstick(engine: EngineConfig, peaks: CpuPeaks) -> tuple[str, str]:
    """Where the network will run and the GEMM that is its ceiling there: the GPU's fp16/bf16 tensor-core
    rate when the engine picks CUDA, else the CPU's bf16 (where it has bf16 dot products) or fp32."""
    from pipeline.backends import choose_backend, host_capabilities

    info = choose_backend(engine, host_capabilities())
    if info.device.startswith("cuda"):
        return "cuda", gemm_dtype_for(info.precision, "cuda")
    return "cpu", "bf16" if peaks.bf16_gflops else "fp32"


def efficiency(flops_per_pixel: float, pixels: int, seconds: float, gemm: GemmRate) -> float:
    """Useful work over what the machine's GEMM rate would do in the same wall time."""
    return flops_per_pixel * pixels / seconds / (gemm.gflops * 1e9)


def _cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def flops_per_input_pixel(model_id: str, weights_dir: Path, cache_dir: Path) -> float:
    """Count conv FLOPs (2 x MACs) of the real network on a 32x32 input, per input pixel."""
    import torch

    from pipeline.weights import load_model

    network = load_model(model_id, weights_dir, cache_dir).model.eval().float()
    total = 0

    def count(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        assert isinstance(module, torch.nn.Conv2d)  # hooked on Conv2d layers only (below)
        weight = module.weight
        macs_per_output = weight.shape[1] * weight.shape[2] * weight.shape[3]  # Cin/groups x kh x kw
        total += 2 * macs_per_output * output.numel()

    hooks = [m.register_forward_hook(count) for m in network.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            network(torch.zeros(1, 3, 32, 32))
    finally:
        for hook in hooks:
            hook.remove()
    return total / (32 * 32)


# --- parent side ----------------------------------------------------------------------------------------


def measure(spec: BenchSpec, timeout_s: float = WORKER_TIMEOUT_S) -> Measurement:
    """Run one measurement in a fresh worker process and read its JSON result."""
    command = [sys.executable, "-m", "pipeline.evaluation.bench", json.dumps(asdict(spec))]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return Measurement(spec=spec, error=f"worker exceeded {timeout_s:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Measurement(spec=spec, error=f"worker failed (exit {done.returncode}): {tail}")
    data = json.loads(lines[-1])
    data["spec"] = spec
    return Measurement(**{key: value for key, value in data.items() if key != "median_s"})


# --- worker side ----------------------------------------------------------------------------------------


def bench_photo(width: int, height: int, image: str | None) -> np.ndarray:
    """An RGB uint8 photo of exactly width x height: the given file, else skimage's astronaut (a real photo
    with a face), else a deterministic synthetic pattern; covered and centre-cropped, never stretched."""
    import cv2

    source = _load_source(image)
    scale = max(width / source.shape[1], height / source.shape[0])
    size = (max(width, round(source.shape[1] * scale)), max(height, round(source.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(source, size, interpolation=interpolation)
    top, left = (resized.shape[0] - height) // 2, (resized.shape[1] - width) // 2
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def _load_source(image: str | None) -> np.ndarray:
    if image is not None:
        from pipeline.evaluation.metrics import as_rgb, to_uint8
        from pipeline.imageio import load_image

        return as_rgb(to_uint8(load_image(Path(image)).pixels))
    try:
        import skimage.data

        return skimage.data.astronaut()
    except ImportError:
        yy, xx = np.mgrid[0:512, 0:512]
        rng = np.random.default_rng(0)
        pattern = np.stack([xx / 2, yy / 2, (xx + yy) / 4], axis=2) + rng.normal(0, 12, (512, 512, 3))
        return np.clip(pattern, 0, 255).astype(np.uint8)


def _worker(spec: BenchSpec) -> dict[str, Any]:
    from pipeline.options import RestoreOptions
    from pipeline.types import EngineConfig, Image

    engine = EngineConfig(**spec.engine)
    rgb = bench_photo(spec.width, spec.height, spec.image)
    options = RestoreOptions(model=spec.model, faces=spec.stage != "sr")
    result: dict[str, Any] = {"seconds": [], "notes": []}
    started = time.perf_counter()
    if spec.stage == "faces":
        run_once = _faces_runner(engine, rgb, options, result)
    else:
        run_once = _restore_runner(engine, Image(pixels=rgb, source_format="jpg"), options, spec, result)
    result["load_s"] = time.perf_counter() - started
    if spec.width * spec.height <= SMALL_INPUT_PIXELS:
        # The first call of a new input shape builds its primitives (OpenVINO, oneDNN): keep that cost
        # out of the steady-state time, but report it.
        began = time.perf_counter()
        run_once()
        result["first_call_s"] = time.perf_counter() - began
    for _ in range(spec.repeats):
        began = time.perf_counter()
        run_once()
        result["seconds"].append(time.perf_counter() - began)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def _restore_runner(engine: Any, image: Any, options: Any, spec: BenchSpec, result: dict[str, Any]) -> Any:
    from pipeline.imageio import DEFAULT_MAX_PIXELS, encode_image
    from pipeline.restorer import Restorer, restore_bytes

    restorer = Restorer(engine)
    restorer.warm_up(options)
    encoded = encode_image(image, "jpg", quality=95)

    def record(report: Any) -> None:
        result.update(backend=report.backend, device=report.device, precision=report.precision)
        result.update(tiles=report.tiles, notes=list(report.notes))
        result["faces_found"] = len(report.faces)
        result["faces_restored"] = sum(1 for face in report.faces if face.restored)
        if str(report.device).startswith("cuda"):
            import torch

            result["hardware"] = f"gpu: {torch.cuda.get_device_name(0)}"

    def run_sr() -> None:
        record(restorer.restore(image, options)[1])

    def run_pipeline() -> None:
        record(restore_bytes(restorer, encoded, options, max_pixels=DEFAULT_MAX_PIXELS).report)

    return run_sr if spec.stage == "sr" else run_pipeline


def _faces_runner(engine: Any, rgb: np.ndarray, options: Any, result: dict[str, Any]) -> Any:
    import cv2

    from pipeline.faces import FaceStage

    stage = FaceStage(engine)
    rgb_float = rgb.astype(np.float32) / 255.0
    upscaled = cv2.resize(rgb, (rgb.shape[1] * 4, rgb.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    stage.warm_up(options)  # loads the detector (and the face network when its weights are present)
    result["notes"] = [f"face stage status: {json.dumps(stage.status(), default=str)}"]

    def run_faces() -> None:
        prepared = stage.prepare(rgb_float, options)
        reports = stage.paste(upscaled.copy(), prepared, 4.0)
        result["faces_found"] = len(reports)
        result["faces_restored"] = sum(1 for face in reports if face.restored)
        result["device"] = "cpu"

    return run_faces


# --- report -------------------------------------------------------------------------------------------


def fill_hardware(measurements: list[Measurement], peaks: CpuPeaks) -> None:
    for m in measurements:
        if not m.hardware and m.error is None:
            m.hardware = peaks.description


def row_efficiency(m: Measurement, gemm: dict[str, GemmRate], flops_per_pixel: float) -> float | None:
    """A network row's efficiency against the yardstick of its device and precision (None: no such
    yardstick was measured, the row failed, or it is the face stage)."""
    rate = next((g for g in gemm.values() if g.measures(m)), None)
    if rate is None or m.error is not None or m.spec.stage == "faces":
        return None
    return efficiency(flops_per_pixel, m.spec.width * m.spec.height, m.median_s, rate)


def bench_markdown(measurements: list[Measurement], gemm: dict[str, GemmRate], flops_per_pixel: float) -> str:
    """The timing table: one row per measurement. gemm: the measured rate per GEMM dtype."""
    header = [
        "stage",
        "input",
        "s/image",
        "input MP/s",
        "GFLOP/s",
        "efficiency",
        "peak RSS MB",
        "load s",
        "engine",
        "faces found/restored",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in measurements:
        size = f"{m.spec.width}x{m.spec.height}"
        if m.error is not None:
            lines.append("| " + " | ".join([m.spec.stage, size, f"failed: {m.error}", *[""] * 7]) + " |")
            continue
        seconds = m.median_s
        gflops = flops_per_pixel * m.spec.width * m.spec.height / seconds / 1e9
        network_stage = m.spec.stage != "faces"
        row = row_efficiency(m, gemm, flops_per_pixel)
        cells = [
            m.spec.stage,
            size,
            f"{seconds:.2f}" + (f" (median of {len(m.seconds)})" if len(m.seconds) > 1 else ""),
            f"{m.megapixels / seconds:.4f}",
            f"{gflops:.0f}" if network_stage else "-",
            "-" if row is None else f"{row:.2f}",
            f"{m.peak_rss_mb:.0f}",
            f"{m.load_s:.1f}",
            " ".join(part for part in (m.backend, m.device, m.precision) if part) or "-",
            f"{m.faces_found}/{m.faces_restored}" if m.spec.stage != "sr" else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _worker_main(argv: list[str]) -> int:
    if argv[0] == "--gemm":
        size = int(argv[3]) if len(argv) > 3 else GEMM_SIZE
        print(_gemm_worker(argv[1], int(argv[2]), size, argv[4] if len(argv) > 4 else "cpu"))
        return 0
    spec = BenchSpec(**json.loads(argv[0]))
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    print(json.dumps(_worker(spec)))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
