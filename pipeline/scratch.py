"""Outputs too big for memory: assembled in a file on disk, read back in strips, resident a strip at a time.

A 35 MP scan restored 4x is 560 MP, 1.7 GB as RGB8; held whole in memory (then encoded, a second copy
in the encoder's buffer) it costs 2.1 GB of RSS. `choose_assembly` decides per image, from the output's
size and the memory this process can still use (cgroup limits included): small outputs stay in memory
(fast, today's bytes exactly), large ones go to `disk_array`, an ndarray over a shared mapping of an
unlinked file in the scratch folder. Nothing is left behind if the process dies: the file has no name.

Why a mapping and not reads and writes: the tiler, the face paste and the resize address the output
like any array (views, channel slices). Why the mapping stays small in RSS: every writer and reader
calls `release_rows` on the rows it is done with, which drops them from this process's page tables
(MADV_DONTNEED: the data stays in the file) and, for large ranges, writes them out and drops them from
the page cache too, so neither RSS nor the cgroup's charge grows with the image.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    from numpy import byte_bounds  # type: ignore[attr-defined,no-redef]

from pipeline.types import RestoreError

Assembly = Literal["memory", "disk"]

# An output up to this size is assembled in memory when memory allows (today's path, byte-identical
# files): 128 MiB is 44 MP of RGB8, e.g. a 1600x1200 photo at 4x. Above it the output and its encoded
# copy are the bulk of a worker's RSS (a 2000x1500 photo with x4plus peaked at 995-1009 MB in memory),
# so it goes to disk even on a roomy machine: the memory goal (<= 1 GB per worker) holds for every
# input, not only on machines that happen to be small.
IN_MEMORY_MAX_BYTES = 128 * 1024 * 1024
# Of what the process can still use, the share one output may take in memory (the encoder's buffer, the
# network's tile and the face stage need the rest).
IN_MEMORY_FRACTION = 0.25
# Dirty pages written out and dropped from the page cache once this much has been released: a cgroup
# charges page cache too, and writeback of gigabytes at the end would stall reclaim.
_WRITEBACK_BYTES = 128 * 1024 * 1024
STRIP_BYTES = 16 * 1024 * 1024  # rows read or written at a time by strip loops (encoders, resize)


@dataclass(frozen=True)
class DiskDecode:
    """Where a large input is decoded (pipeline/disk_decode.py): into `folder` when its pixels are more
    than this process keeps in memory, by the same rule as outputs (choose_assembly), given the memory it
    can still use (`available_bytes`, cgroup limits included: pipeline.backends.base.available_ram_bytes)."""

    folder: Path
    available_bytes: int

    def wants_disk(self, decoded_bytes: int) -> bool:
        return choose_assembly(decoded_bytes, self.available_bytes) == "disk"


def choose_assembly(output_bytes: int, available_bytes: int) -> Assembly:
    """Where to assemble an output of `output_bytes`, given what this process can still use (pure: the
    caller reads the machine, pipeline.backends.base.available_ram_bytes)."""
    if output_bytes <= min(IN_MEMORY_MAX_BYTES, available_bytes * IN_MEMORY_FRACTION):
        return "memory"
    return "disk"


def disk_array(shape: tuple[int, ...], dtype: np.dtype | type, scratch_dir: Path) -> np.ndarray:
    """A zero-filled array of `shape` backed by an unlinked file in `scratch_dir` (created if missing).

    The file is sparse until written and freed when the last view of the array is gone."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    scratch_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch_dir, prefix="assembly-") as handle:
        _reserve(handle.fileno(), max(size, 1), scratch_dir)
        mapping = mmap.mmap(handle.fileno(), max(size, 1), flags=mmap.MAP_SHARED)
        # The mapping holds its own reference to the file; this one is for writeback and page-cache drops.
        descriptor = os.dup(handle.fileno())
    _files[id(mapping)] = [descriptor, 0]
    _folders[id(mapping)] = scratch_dir
    weakref.finalize(mapping, _forget, id(mapping))
    return np.ndarray(shape, dtype=dtype, buffer=mapping)


def _reserve(descriptor: int, size: int, scratch_dir: Path) -> None:
    """Give the file its blocks now: a write through the mapping into a file the disk cannot hold is a
    SIGBUS that kills the process, where a refusal here is an error the job can report."""
    try:
        os.posix_fallocate(descriptor, 0, size)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RestoreError(
                f"not enough disk space in {scratch_dir} to assemble a {size / 1e9:.1f} GB output; free "
                "space there (the state folder's scratch) or lower max_output_megapixels"
            ) from None
        if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(descriptor, size)  # a filesystem without fallocate: sparse, as good as it gets


def is_disk_backed(array: np.ndarray) -> bool:
    return _mapping_of(array) is not None


def scratch_folder_of(array: np.ndarray) -> Path:
    """The scratch folder a disk-backed array's file was made in (arrays derived from it go there too)."""
    mapping = _mapping_of(array)
    folder = _folders.get(id(mapping)) if mapping is not None else None
    return folder if folder is not None else Path(tempfile.gettempdir())


def release_rows(array: np.ndarray, first: int, last: int) -> None:
    """Rows first..last-1 of `array` are done with for now: drop them from this process's memory.

    No-op for arrays in memory. The rows' data stays in the file (read again on the next access)."""
    mapping = _mapping_of(array)
    if mapping is None or last <= first:
        return
    start, end = _byte_range(array[first:last], mapping)
    page = mmap.PAGESIZE
    start, end = -(-start // page) * page, end // page * page  # whole pages inside the rows only
    if end <= start:
        return
    mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
    _writeback(mapping, start, end)


def release_all(array: np.ndarray, written: int = 0) -> None:
    """Drop every page of `array`'s mapping from this process's memory, wherever it was touched (a
    decoder writing rows, a rotated copy reading columns). Always safe on these shared mappings: the
    data stays in the file, and a page touched again is simply mapped again. `written`: bytes written
    since the last call, counted towards the next writeback. No-op for arrays in memory."""
    mapping = _mapping_of(array)
    if mapping is None:
        return
    mapping.madvise(mmap.MADV_DONTNEED, 0, len(mapping))
    _writeback(mapping, 0, written)


def row_strips(
    height: int, row_bytes: int, multiple: int = 1, max_rows: int | None = None
) -> Iterator[tuple[int, int]]:
    """(first, last) row ranges of about STRIP_BYTES each (at most `max_rows`), each a multiple of
    `multiple` rows but the last."""
    rows = STRIP_BYTES // max(row_bytes, 1)
    if max_rows is not None:
        rows = min(rows, max_rows)
    rows = max(multiple, rows // multiple * multiple)
    for first in range(0, height, rows):
        yield first, min(height, first + rows)


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return base if isinstance(base, mmap.mmap) else None


def _byte_range(rows: np.ndarray, mapping: mmap.mmap) -> tuple[int, int]:
    origin = np.frombuffer(mapping, dtype=np.uint8, count=1).__array_interface__["data"][0]
    low, high = byte_bounds(rows)
    return low - origin, high - origin


# id(mapping) -> [file descriptor, bytes released since the last writeback, first byte of them]
_files: dict[int, list[int]] = {}
_folders: dict[int, Path] = {}  # id(mapping) -> the scratch folder it was made in


def _forget(key: int) -> None:
    _folders.pop(key, None)
    entry = _files.pop(key, None)
    if entry is not None:
        os.close(entry[0])


def _writeback(mapping: mmap.mmap, start: int, end: int) -> None:
    """Every _WRITEBACK_BYTES released: write the file out and drop it from the page cache (dirty pages
    count against a cgroup's limit until written, and reclaim waiting on gigabytes of writeback stalls)."""
    entry = _files.get(id(mapping))
    if entry is None:
        return
    entry[1] += end - start
    if entry[1] < _WRITEBACK_BYTES:
        return
    entry[1] = 0
    os.fdatasync(entry[0])
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(entry[0], 0, 0, os.POSIX_FADV_DONTNEED)  # only clean, unmapped pages go
