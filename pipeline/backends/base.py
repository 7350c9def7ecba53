"""The one small interface every inference backend implements, and the pure arithmetic they share.

An Upscaler takes a batch of tiles (N,3,H,W float32 RGB in [0,1]) and returns them super-resolved
(N,3,H*s,W*s, clamped to [0,1]). The tiler (pipeline/tiling.py) owns tile layout, context and blending;
a backend owns only device, precision and memory. Tile sizes here count INPUT pixels, context included.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from pipeline.tiling import MIN_TILE

# Peak working memory per INPUT pixel at fp32, measured/estimated per architecture (activations of the
# widest layers at 4x resolution dominate). Half precision roughly halves it.
BYTES_PER_INPUT_PIXEL = {"ESRGAN": 16 * 1024, "Compact": 4 * 1024}
DEFAULT_BYTES_PER_INPUT_PIXEL = 16 * 1024

# On CPU a bigger tile does not run faster (the network is compute-bound), it only costs memory; 256 px
# keeps the context-padding overhead small (~25 % with 16 px context per side).
CPU_TILE_MAX = 256
GPU_TILE_MAX = 512
TILE_MULTIPLE = 16  # x2plus needs even sizes; multiples of 16 are friendly to every kernel
GPU_BATCH_MAX = 8
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
MEMORY_FRACTION = 0.5  # leave half of what is free to the rest of the process and the OS


@dataclass(frozen=True)
class BackendInfo:
    backend: str  # "openvino" | "torch"
    device: str  # "cpu" | "cuda"
    precision: str  # "fp32" | "bf16" | "fp16"
    reason: str  # why this was chosen, in words: "cpu with avx512_bf16: openvino bf16"


@runtime_checkable
class Upscaler(Protocol):
    """What the Restorer and the tiler need from a loaded super-resolution network."""

    scale: int  # the network's own factor (output = input x scale)
    size_multiple: int  # input H and W must be multiples of this (the backend pads; the tiler aligns)
    batch_size: int  # tiles per call
    info: BackendInfo  # backend, device, precision and why: copied into every RestoreReport

    def warm_up(self) -> None:
        """Load / compile what the first image would otherwise wait for."""
        ...

    def suggest_tile(self) -> int:
        """The tile edge (input pixels, context included) this backend runs best within its memory."""
        ...

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """N,3,H,W float32 RGB in [0,1] -> N,3,H*scale,W*scale in [0,1]."""
        ...


def bytes_per_input_pixel(arch: str, precision: str) -> int:
    base = BYTES_PER_INPUT_PIXEL.get(arch, DEFAULT_BYTES_PER_INPUT_PIXEL)
    return base // 2 if precision in ("fp16", "bf16") else base


def tile_for_memory(free_bytes: int, per_pixel: int, cap: int, batch: int = 1) -> int:
    """Largest tile edge (multiple of 16, >= MIN_TILE) whose `batch` tiles fit in a fraction of free RAM."""
    budget = free_bytes * MEMORY_FRACTION / max(batch, 1)
    edge = int(math.sqrt(max(budget, 0) / per_pixel)) // TILE_MULTIPLE * TILE_MULTIPLE
    return max(MIN_TILE, min(edge, cap // TILE_MULTIPLE * TILE_MULTIPLE))


def batch_for_memory(free_bytes: int, per_pixel: int, tile: int, cap: int = GPU_BATCH_MAX) -> int:
    """How many tiles of edge `tile` fit together in a fraction of free memory (1..cap)."""
    per_tile = tile * tile * per_pixel
    return max(1, min(cap, int(free_bytes * MEMORY_FRACTION // per_tile)))


def cap_tile(limit: int, configured: int | None) -> int:
    """The tile edge limit after the user's EngineConfig.tile cap (never below MIN_TILE)."""
    if configured is not None:
        limit = min(limit, max(MIN_TILE, configured))
    return limit


def available_ram_bytes(meminfo: Path = Path("/proc/meminfo"), cgroup: Path = SELF_CGROUP) -> int:
    """RAM this process can still use: MemAvailable from /proc/meminfo (psutil is not a dependency), else
    free pages from sysinfo (where /proc shows only processes: systemd's ProcSubset=pid), capped by the
    room left under the cgroup's memory.max (MemoryMax= of the unit, a container limit); 2 GiB unknown."""
    free = _meminfo_available(meminfo) or _sysinfo_available() or 2 << 30
    room = cgroup_memory_room(cgroup)
    return min(free, room) if room is not None else free


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysinfo_available() -> int | None:
    # glibc answers this from the sysinfo() call (free RAM, page cache not counted: on the safe side).
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def cgroup_memory_room(cgroup: Path = SELF_CGROUP, cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """memory.max - memory.current of this process's cgroup (v2; /proc/self stays visible under
    ProcSubset=pid), or limit_in_bytes - usage_in_bytes where the memory controller is still on cgroup
    v1 (hybrid hosts, older Docker); None without a limit or where unreadable."""
    try:
        lines = cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # v1: "4:memory:/path"
        _, controllers, relative = [*line.split(":", 2), "", ""][:3]
        if "memory" in controllers.split(","):
            folder = cgroup_root / "memory" / relative.lstrip("/")
            return _room(folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes")
    unified = next((line[3:] for line in lines if line.startswith("0::")), None)  # v2: "0::/path"
    if unified is None:
        return None
    folder = cgroup_root / unified.lstrip("/")
    return _room(folder / "memory.max", folder / "memory.current")


_NO_LIMIT_V1 = 1 << 62  # v1 reports "no limit" as the largest page-aligned 64-bit number


def _room(limit_file: Path, usage_file: Path) -> int | None:
    try:
        limit = limit_file.read_text().strip()
        if limit == "max" or int(limit) >= _NO_LIMIT_V1:
            return None
        return max(0, int(limit) - int(usage_file.read_text()))
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on (affinity/cgroup cpusets), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo. Where /proc shows only processes (systemd's
    ProcSubset=pid), the one flag the backends choose by, from OpenVINO's own CPUID probe: BF16 means
    avx512_bf16 (every AMX part has it too)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return _openvino_cpu_flags()
    return set()


def _openvino_cpu_flags() -> set[str]:
    try:
        import openvino as ov

        capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin: no flags known, fp32 is always right
        return set()
    return {"avx512_bf16"} if "BF16" in capabilities else set()


def cpu_bf16_flag(flags: set[str]) -> str | None:
    """The flag that makes bf16 fast on this CPU (AMX or AVX-512 BF16), or None."""
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return None


def pad_to_multiple(batch: np.ndarray, multiple: int) -> tuple[np.ndarray, int, int]:
    """Reflect-pad H and W up to a multiple (e.g. 2 for x2plus's pixel unshuffle); returns (batch, h, w)."""
    h, w = batch.shape[2], batch.shape[3]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        mode: Literal["reflect", "edge"] = "reflect" if pad_h < h and pad_w < w else "edge"
        batch = np.pad(batch, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    return batch, h, w


# How allocation failures read in torch (CPU allocator), OpenVINO (std::bad_alloc) and numpy.
_OUT_OF_MEMORY_MARKERS = (
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate",
    "not enough memory",
    "out of memory",
    "bad_alloc",
)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation failure, which the tiler answers by splitting the tile (not by failing)."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(marker in text for marker in _OUT_OF_MEMORY_MARKERS)
