"""A large photo restored inside a memory-limited cgroup is not killed (issue 20, item 3).

A child cgroup of this test's own cgroup (cgroup v2 memory.max / memory.swap.max, or v1's
memory.limit_in_bytes where the memory controller is still on v1) gets a hard limit; a process in it
restores a 12 MP photo 4x (a 192 MP, 576 MB output) through pipeline.restore_bytes and publishes it as
the worker does (benchmarks/bigscan_child.py). The same run with today's in-memory assembly forced is
killed by the kernel under the same limit: that is what proves the limit bites and the test can fail.

The network is the nearest-neighbour stand-in (pipeline/evaluation/standin.py): a real network on a 12 MP
photo takes tens of minutes on a 2-core CPU, and its memory is one tile's activations whatever the image
size (benchmarks/bench_bigscan.py measures the real networks). Needs root and a writable cgroup memory
controller; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage

from pipeline import probe

ROOT = Path(__file__).resolve().parent.parent
CHILD = ROOT / "benchmarks" / "bigscan_child.py"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The output alone (576 MB) plus the encoded JPEG and the interpreter do not fit; the disk path's few
# strips do with room to spare. Scaled down from the 1.5 GB for a 35 MP scan, which runs as the
# benchmark (bench_bigscan.py --cgroup 1536): the same ratio of output to limit, a third of the time.
LIMIT_BYTES = 480 * 1024 * 1024


@dataclass
class MemoryCgroup:
    """A cgroup with a memory limit that a child process can be started in."""

    path: Path
    version: int

    def set_limit(self, limit: int) -> None:
        if self.version == 2:
            (self.path / "memory.max").write_text(str(limit))
            if (self.path / "memory.swap.max").exists():
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(limit))
            memsw = self.path / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(str(limit))  # no swap beyond the limit either

    def oom_kills(self) -> int:
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak_bytes(self) -> int | None:
        name = "memory.peak" if self.version == 2 else "memory.max_usage_in_bytes"
        file = self.path / name
        return int(file.read_text()) if file.exists() else None

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `command` inside the cgroup (the shell joins it, then execs the command)."""
        join = f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"'
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            ["sh", "-c", join, "sh", *command], capture_output=True, text=True, timeout=timeout, env=env
        )


def own_memory_cgroup() -> tuple[Path, int] | str:
    """This process's cgroup folder holding the memory controller and its version, or why there is none."""
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, relative = line.split(":", 2)
        if "memory" in controllers.split(","):
            folder = CGROUP_ROOT / "memory" / relative.lstrip("/")
            if os.access(folder, os.W_OK):
                return folder, 1
            return f"cgroup v1 memory folder {folder} is not writable"
    unified = next((line[3:] for line in lines if line.startswith("0::")), None)
    if unified is None:
        return "no cgroup memory controller in /proc/self/cgroup"
    base = (
        CGROUP_ROOT / "unified" if (CGROUP_ROOT / "unified" / "cgroup.controllers").exists() else CGROUP_ROOT
    )
    folder = base / unified.lstrip("/")
    controllers = (folder / "cgroup.controllers").read_text().split() if folder.exists() else []
    if "memory" not in controllers:
        return f"the memory controller is not available in cgroup v2 at {folder}"
    if not os.access(folder, os.W_OK):
        return f"cgroup v2 folder {folder} is not writable"
    return folder, 2


@pytest.fixture
def memory_cgroup() -> Iterator[MemoryCgroup]:
    found = own_memory_cgroup()
    if isinstance(found, str):
        pytest.skip(found)
    parent, version = found
    path = parent / f"restorer-bigscan-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir()
    except OSError as error:  # v2: a cgroup with processes cannot have children with controllers
        pytest.skip(f"cannot create a child cgroup in {parent}: {error}")
    if version == 2 and not (path / "memory.max").exists():
        path.rmdir()
        pytest.skip(f"the memory controller is not enabled for children of {parent}")
    try:
        yield MemoryCgroup(path, version)
    finally:
        path.rmdir()  # its processes have exited


def large_photo(path: Path, width: int = 4000, height: int = 3000) -> Path:
    """A 12 MP JPEG that compresses like a photo (smooth gradients and grain)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (np.sin(xs / 90) + np.cos(ys / 70) + 2) * 60
    pixels = np.stack([base, base * 0.8 + 20, 255 - base], axis=2) + rng.normal(0, 6, (height, width, 3))
    PILImage.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def restore_in(
    cgroup: MemoryCgroup, source: Path, work: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(CHILD), str(source), str(work / "out"), str(work / "scratch"), *extra]
    return cgroup.run(command, timeout=540)


def test_a_12mp_photo_restored_4x_fits_where_the_in_memory_output_is_killed(
    memory_cgroup: MemoryCgroup, tmp_path: Path
) -> None:
    source = large_photo(tmp_path / "scan.jpg")
    memory_cgroup.set_limit(LIMIT_BYTES)

    done = restore_in(memory_cgroup, source, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert memory_cgroup.oom_kills() == 0
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["size"] == [16000, 12000]
    assert any("assembled on disk" in note for note in result["notes"])
    output = Path(result["output"])
    info = probe(output.read_bytes(), max_pixels=10**9)
    assert (info.format, info.width, info.height) == ("jpg", 16000, 12000)
    # The whole entropy-coded stream (every restart strip) decodes: at 1/8 scale, in seconds.
    small = cv2.imread(str(output), cv2.IMREAD_REDUCED_COLOR_8)
    assert small is not None and small.shape == (1500, 2000, 3)
    peak = memory_cgroup.peak_bytes()
    assert peak is None or peak <= LIMIT_BYTES
    assert list((tmp_path / "scratch").iterdir()) == []  # unlinked scratch files: nothing left

    killed = restore_in(memory_cgroup, source, tmp_path, "--in-memory")
    assert killed.returncode != 0
    assert memory_cgroup.oom_kills() >= 1


# The input side: a 60 MP JPEG decoded (nothing else) under a limit that Pillow's whole picture (4 bytes a
# pixel, 240 MB) and the array copied out of it (180 MB) do not fit; decoded into the scratch folder a
# strip at a time (pipeline/disk_decode.py) it does, with the same pixels.
DECODE_LIMIT_BYTES = 300 * 1024 * 1024


def test_a_60mp_jpeg_decodes_to_disk_where_the_in_memory_decode_is_killed(
    memory_cgroup: MemoryCgroup, tmp_path: Path
) -> None:
    tile = cv2.imread(str(large_photo(tmp_path / "tile.jpg", 1000, 1000)))
    source = tmp_path / "scan.jpg"
    cv2.imwrite(str(source), np.tile(tile, (6, 10, 1)), [cv2.IMWRITE_JPEG_QUALITY, 90])  # 10000x6000
    with PILImage.open(source) as decoded:  # the in-memory decode, here outside the cgroup
        reference = np.asarray(decoded).sum(dtype=np.uint64)
    memory_cgroup.set_limit(DECODE_LIMIT_BYTES)

    done = restore_in(memory_cgroup, source, tmp_path, "--decode-only")
    assert done.returncode == 0, done.stderr[-2000:]
    assert memory_cgroup.oom_kills() == 0
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["size"] == [10000, 6000] and result["sum"] == int(reference)
    assert any("decoded into the scratch folder" in note for note in result["notes"])
    assert list((tmp_path / "scratch").iterdir()) == []

    killed = restore_in(memory_cgroup, source, tmp_path, "--decode-only", "--in-memory")
    assert killed.returncode != 0
    assert memory_cgroup.oom_kills() >= 1
