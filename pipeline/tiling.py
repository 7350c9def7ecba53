"""Seam-free tiled super-resolution, pure numpy: the network is a plain callable.

How the image is cut (per axis, the same on both):
- Every tile handed to the network has ONE shape per image. Along each axis it is the shortest window
  (at most `tile` input pixels, context included) with which the fewest windows still overlap by 2 * pad,
  so no pixel is computed more often than it must be; an image edge shorter than `tile` is one tile of the
  image's own length (exactly whole-image inference), reflect-padded only up to the network's size
  multiple (`upscaler.size_multiple`, e.g. 2 or 4 for x2/x1 models that pixel-unshuffle).
- Each tile then meets the network's other size needs (SizeNeeds: `size_minimum`, e.g. 40 px for SCUNet,
  and `size_square`): padded by reflection before the call and cropped back after it, at any scale.
- Tile windows stay inside the image: a border tile sees the real image border, exactly as whole-image
  inference does, so no reflection artefact appears at the image edge. Only interior sides need context.
- Neighbouring windows overlap by at least 2 * pad (windows are spread evenly, so usually by more). The
  two cross-fade linearly over `blend` pixels centred on the middle of their overlap, so every pixel kept
  has at least `pad - blend/2` pixels of real image context around it, and typically more.

Output memory: the result is written straight into the final dtype (uint8/uint16). Blending happens in a
float32 buffer that holds one row of tiles (plus the overlap carried to the next row), never the whole
image. The output itself comes from `allocate`: memory by default, or (the Restorer's choice for large
outputs, pipeline/scratch.py) an array on disk whose finished rows leave memory as they are written,
so a 4000x3000 -> 16000x12000 upscale holds the strip, not the 576 MB output.

Out of memory: a batch that fails is retried one tile at a time; a single tile that fails is itself
upscaled by this same tiler with half the tile edge (and every later tile goes straight to the smaller
size). The image never fails for it unless a 16x16 tile does not fit.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.scratch import is_disk_backed, release_all, release_rows
from pipeline.types import DeviceOutOfMemoryError, ProgressCallback

DEFAULT_PAD = 32  # context per interior side, input pixels (measured: see docs/performance.md)
DEFAULT_BLEND = 16  # cross-fade width inside the context, input pixels
# The smallest tile edge anywhere: backends never suggest less (a smaller `tile` setting is raised to it),
# the settings refuse less, and an out-of-memory split stops here.
MIN_TILE = 16
_FLUSH_ROWS = 64  # output rows converted to the final dtype at a time
# A disk-backed output's blending strip (one window row) stays under this: wider outputs are upscaled in
# bands of window columns (column_bands).
STRIP_MAX_BYTES = 64 * 1024 * 1024
# Fixed-point one for 8-bit outputs: 16 below 65535, so even 32 overlapping contributions (9 is the most a
# pixel gets), each rounded up by at most 1/2, cannot overflow uint16.
_FIXED_ONE = 65519


class TileUpscaler(Protocol):
    """What the tiler needs from a backend (pipeline.backends' Upscaler satisfies it)."""

    scale: int
    batch_size: int

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...


# (shape, dtype) -> a writable array for the output: np.empty by default; the Restorer passes a disk-backed
# one (pipeline.scratch.disk_array) for outputs too big for memory.
Allocate = Callable[[tuple[int, ...], np.dtype], np.ndarray]


def allocate_in_memory(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.empty(shape, dtype=dtype)


@dataclass
class TiledResult:
    pixels: np.ndarray  # H*s x W*s x 3 (or x 1 squeezed to HxW when gray=True), out_dtype
    tiles: int  # windows the image was cut into (before any out-of-memory split)
    tile_shape: tuple[int, int]  # (height, width) of the input tile handed to the network
    oom_splits: int  # tiles that had to be split because the device ran out of memory


@dataclass(frozen=True)
class _Axis:
    """Tile windows along one axis and their normalised blend weights in output pixels."""

    starts: list[int]  # window start, input pixels
    length: int  # window length, input pixels (the fixed tile edge along this axis)
    padded_size: int  # image size along this axis after reflect-padding to at least `length`
    weights: list[np.ndarray]  # per window, float32 of length length*scale, sums to 1 over windows


def plan_axis(size: int, tile: int, pad: int, blend: int, scale: int, align: int = 1) -> _Axis:
    """Place windows of a fixed length along an axis of `size` pixels and compute their blend weights.

    align: the network's size multiple; a short axis is reflect-padded up to it."""
    if size <= tile:
        length = max(size, min(tile, _round_up(size, align)))
        ramps = [np.ones(length * scale, np.float32)]
        return _Axis([0], length, max(size, length), ramps)
    pad = min(pad, (tile - 1) // 2 - 1)
    blend = max(0, min(blend, pad))
    count = math.ceil((size - tile) / (tile - 2 * pad)) + 1
    tile = _shortest_window(size, count, tile, pad, align)
    starts = _spread(size, tile, count)
    # Cross-fade in the MIDDLE of each actual overlap: windows are spread evenly, so overlaps are usually
    # wider than the guaranteed 2 * pad and every kept pixel gets all of that extra context for free.
    middles = [(starts[i + 1] + starts[i] + tile) / 2 for i in range(count - 1)]
    blend = min(blend, min(b - a for a, b in itertools.pairwise(starts)))
    raw = [
        _window_weights(
            start,
            tile,
            middles[i - 1] if i > 0 else None,
            middles[i] if i < count - 1 else None,
            blend,
            scale,
        )
        for i, start in enumerate(starts)
    ]
    total = np.zeros(size * scale, np.float64)
    for start, weight in zip(starts, raw, strict=True):
        total[start * scale : (start + tile) * scale] += weight
    normalised = [
        (weight / total[s * scale : (s + tile) * scale]).astype(np.float32)
        for s, weight in zip(starts, raw, strict=True)
    ]
    return _Axis(starts, tile, size, normalised)


def _shortest_window(size: int, count: int, tile: int, pad: int, align: int) -> int:
    """The shortest window (a multiple of `align`, at most `tile`) with which `count` evenly spread windows
    still overlap by 2 * pad: the same number of network calls, each on fewer pixels (a 640 px axis cut
    for 512 px tiles runs two 352 px windows, not two 512 px ones)."""
    length = _round_up(math.ceil((size + (count - 1) * 2 * pad) / count), align)
    while length < tile and _smallest_overlap(_spread(size, length, count), length) < 2 * pad:
        length += align  # the rounded window starts may step up to one pixel further apart
    return min(length, tile)


def _spread(size: int, length: int, count: int) -> list[int]:
    """Start of each of `count` windows of `length` spread evenly from 0 to the end of the axis."""
    return [round(i * (size - length) / (count - 1)) for i in range(count)]


def _smallest_overlap(starts: list[int], length: int) -> int:
    return min(first + length - second for first, second in itertools.pairwise(starts))


def tile_count(height: int, width: int, tile: int, pad: int, blend: int, scale: int, align: int = 1) -> int:
    """How many windows upscale_tiled will cut an image into (for progress totals and estimates)."""
    rows = plan_axis(height, tile, pad, blend, scale, align)
    cols = plan_axis(width, tile, pad, blend, scale, align)
    return len(rows.starts) * len(cols.starts)


def _window_weights(
    start: int, tile: int, left: float | None, right: float | None, blend: int, scale: int
) -> np.ndarray:
    """1 in the kept middle, 0 beyond the cross-fades, linear ramps of width `blend` centred on the
    overlap middles `left` / `right` (image coordinates; None at the image border)."""
    x = start + (np.arange(tile * scale, dtype=np.float64) + 0.5) / scale  # output pixel centres, input px
    weight = np.ones_like(x)
    half = blend / 2
    if left is not None:
        weight = np.minimum(weight, _ramp(x - (left - half), blend))
    if right is not None:
        weight = np.minimum(weight, _ramp((right + half) - x, blend))
    return weight


def _ramp(distance: np.ndarray, width: float) -> np.ndarray:
    if width <= 0:
        return (distance >= 0).astype(np.float64)
    return np.clip(distance / width, 0.0, 1.0)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _reflect_pad(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad bottom/right by reflection up to height x width (edge-repeat for 1-pixel axes)."""
    extra_h, extra_w = height - rgb.shape[0], width - rgb.shape[1]
    if extra_h == 0 and extra_w == 0:
        return rgb
    mode: Literal["reflect", "edge"] = "reflect" if min(rgb.shape[:2]) > 1 else "edge"
    return np.pad(rgb, ((0, extra_h), (0, extra_w), (0, 0)), mode=mode)


def as_float(pixels: np.ndarray) -> np.ndarray:
    """uint8/uint16 -> float32 in [0,1]; float input as float32."""
    if pixels.dtype.kind == "u":
        return pixels.astype(np.float32) * np.float32(1.0 / np.iinfo(pixels.dtype).max)
    return pixels.astype(np.float32, copy=False)


def to_dtype(values: np.ndarray, dtype: np.dtype | type) -> np.ndarray:
    """[0,1] float -> uint8/uint16 (rounded, clipped) or float32 (clipped)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.clip(values, 0.0, 1.0).astype(dtype)
    peak = float(np.iinfo(dtype).max)
    return np.clip(values * peak + 0.5, 0.0, peak).astype(dtype)


@dataclass(frozen=True)
class SizeNeeds:
    """What a network needs of its input's height and width (spandrel's size_requirements): multiples of
    `multiple`, at least `minimum`, and square when `square` (window transformers, U-Nets, Uformer)."""

    multiple: int = 1
    minimum: int = 0
    square: bool = False


def size_needs(upscaler: object) -> SizeNeeds:
    """The upscaler's size needs; attributes it lacks are the neutral ones (any size)."""
    return SizeNeeds(
        int(getattr(upscaler, "size_multiple", 1) or 1),
        int(getattr(upscaler, "size_minimum", 0) or 0),
        bool(getattr(upscaler, "size_square", False)),
    )


def pad_for_network(batch: np.ndarray, needs: SizeNeeds) -> tuple[np.ndarray, int, int]:
    """Pad an N,C,H,W batch at the bottom and right (by reflection; edge-repeat for 1-pixel axes) until
    it meets `needs`; returns (batch, H, W) so the caller crops the output back to H*s x W*s."""
    height, width = batch.shape[2], batch.shape[3]
    target_h = _round_up(max(height, needs.minimum), needs.multiple)
    target_w = _round_up(max(width, needs.minimum), needs.multiple)
    if needs.square:
        target_h = target_w = max(target_h, target_w)
    if (target_h, target_w) == (height, width):
        return batch, height, width
    mode: Literal["reflect", "edge"] = "reflect" if min(height, width) > 1 else "edge"  # numpy: long pads too
    pads = ((0, 0), (0, 0), (0, target_h - height), (0, target_w - width))
    return np.pad(batch, pads, mode=mode), height, width


class _Runner:
    """Hands fixed-shape batches to the network; splits batches and tiles when the device runs out."""

    def __init__(self, upscaler: TileUpscaler, pad: int, blend: int) -> None:
        self.upscaler = upscaler
        self.pad = pad
        self.blend = blend
        self.batch_size = max(1, int(getattr(upscaler, "batch_size", 1) or 1))
        self.max_tile: int | None = None  # lowered after an out-of-memory error
        self.oom_splits = 0

    def run(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        """tiles: HxWx3 float32 -> list of (H*s)x(W*s)x3 float32."""
        if self.max_tile is not None and max(tiles[0].shape[:2]) > self.max_tile:
            return [self._split(tile) for tile in tiles]
        if len(tiles) > 1 and self.batch_size > 1:
            try:
                return self._call(tiles)
            except DeviceOutOfMemoryError:
                self.batch_size = max(1, len(tiles) // 2)
                return [out for tile in tiles for out in self.run([tile])]
        outputs = []
        for tile in tiles:
            try:
                outputs.extend(self._call([tile]))
            except DeviceOutOfMemoryError:
                self.max_tile = max(tile.shape[:2]) // 2
                outputs.append(self._split(tile))
        return outputs

    def _call(self, tiles: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = np.ascontiguousarray(np.stack(tiles).transpose(0, 3, 1, 2), dtype=np.float32)
        padded, height, width = pad_for_network(batch, size_needs(self.upscaler))
        result = np.asarray(self.upscaler(padded), dtype=np.float32)
        scale = self.upscaler.scale
        expected = (len(tiles), 3, padded.shape[2] * scale, padded.shape[3] * scale)
        if result.shape != expected:
            raise ValueError(f"upscaler returned shape {result.shape}, expected {expected}")
        return list(result[:, :, : height * scale, : width * scale].transpose(0, 2, 3, 1))

    def _split(self, tile: np.ndarray) -> np.ndarray:
        smaller = self.max_tile if self.max_tile is not None else max(tile.shape[:2]) // 2
        if smaller < MIN_TILE:
            raise DeviceOutOfMemoryError(
                f"out of memory even for a {MIN_TILE}x{MIN_TILE} tile; free some device memory"
            )
        self.oom_splits += 1
        pad = min(self.pad, max(2, (smaller - MIN_TILE // 2) // 2))
        return _tiled_float(tile, self, smaller, pad, min(self.blend, pad))


def _tiled_float(rgb: np.ndarray, runner: _Runner, tile: int, pad: int, blend: int) -> np.ndarray:
    """Float32 whole-output variant, used only for a tile split after out-of-memory (small)."""
    result = _tile_image(rgb, runner, tile, pad, blend, np.float32, None, gray=False)
    return result.pixels


def upscale_tiled(
    rgb_float: np.ndarray,
    upscaler: TileUpscaler,
    tile: int,
    pad: int = DEFAULT_PAD,
    out_dtype: np.dtype | type = np.uint8,
    on_progress: ProgressCallback | None = None,
    *,
    blend: int = DEFAULT_BLEND,
    gray: bool = False,
    allocate: Allocate = allocate_in_memory,
) -> TiledResult:
    """Upscale an HxWx3 RGB image by upscaler.scale, tile by tile.

    rgb_float: float32 in [0,1], or uint8/uint16 (scaled by the dtype's maximum one window at a time, so
    a large integer image is never copied whole into float).

    tile: input tile edge including context (the fixed network input shape), >= 16.
    pad: context per interior side; blend: cross-fade width inside it (both input pixels).
    gray: write the mean of the three output channels (HxW) - for alpha and grayscale images.
    allocate(shape, dtype): where the output lives (memory by default; finished rows of a disk-backed
    output are released from memory as they are written).
    Progress: on_progress("upscale", tiles_done, total).
    """
    if rgb_float.ndim != 3 or rgb_float.shape[2] != 3:
        raise ValueError(f"upscale_tiled expects HxWx3, got shape {rgb_float.shape}")
    if tile < MIN_TILE:
        raise ValueError(f"tile must be >= {MIN_TILE}, got {tile}")
    runner = _Runner(upscaler, pad, blend)
    return _tile_image(rgb_float, runner, tile, pad, blend, out_dtype, on_progress, gray, allocate)


def _tile_image(
    rgb: np.ndarray,
    runner: _Runner,
    tile: int,
    pad: int,
    blend: int,
    out_dtype: np.dtype | type,
    on_progress: ProgressCallback | None,
    gray: bool,
    allocate: Allocate = allocate_in_memory,
) -> TiledResult:
    scale = int(runner.upscaler.scale)
    height, width = rgb.shape[:2]
    align = int(getattr(runner.upscaler, "size_multiple", 1) or 1)
    rows = plan_axis(height, tile, pad, blend, scale, align)
    cols = plan_axis(width, tile, pad, blend, scale, align)
    source = _reflect_pad(rgb, rows.padded_size, cols.padded_size)  # any dtype; windows become float
    out_h, out_w = height * scale, width * scale
    channels = 1 if gray else 3
    output = allocate((out_h, out_w) if gray else (out_h, out_w, 3), np.dtype(out_dtype))
    total = len(rows.starts) * len(cols.starts)
    accumulator = np.dtype(np.uint16 if np.dtype(out_dtype) == np.uint8 else np.float32)
    column_bytes = rows.length * scale * channels * accumulator.itemsize  # one output column of a strip
    bands = column_bands(cols, scale, column_bytes if is_disk_backed(output) else 0)
    done = 0
    if on_progress is not None:
        on_progress("upscale", 0, total)
    carry: np.ndarray | None = None  # the previous band's sums over the columns it shares with this one
    for first_window, last_window in bands:
        left = cols.starts[first_window] * scale
        right = min(out_w, (cols.starts[last_window - 1] + cols.length) * scale)
        shared = cols.starts[last_window] * scale if last_window < len(cols.starts) else right
        carry_out = allocate((out_h, right - shared, channels), accumulator) if shared < right else None
        strip = _Strip(output, rows.length * scale, channels, (left, shared, right), carry, carry_out)
        columns = list(enumerate(cols.starts))[first_window:last_window]
        for row_index, y in enumerate(rows.starts):
            for first in range(0, len(columns), runner.batch_size):
                group = columns[first : first + runner.batch_size]
                windows = [as_float(source[y : y + rows.length, x : x + cols.length]) for _, x in group]
                outputs = runner.run(windows)
                for (column, x), upscaled in zip(group, outputs, strict=True):
                    strip.add(upscaled, y * scale, x * scale, rows.weights[row_index], cols.weights[column])
                done += len(group)
                if on_progress is not None:
                    on_progress("upscale", done, total)
            next_start = rows.starts[row_index + 1] * scale if row_index + 1 < len(rows.starts) else out_h
            strip.flush_until(next_start)
            release_all(source)  # the rows read so far of a disk-backed input (pipeline/disk_decode.py)
        carry = carry_out
        del strip  # before the next band's strip is made: one strip in memory at a time
    return TiledResult(output, total, (rows.length, cols.length), runner.oom_splits)


def column_bands(cols: _Axis, scale: int, column_bytes: int) -> list[tuple[int, int]]:
    """The column windows in bands of consecutive windows, (first, last + 1) each, whose strip (one
    window row high, `column_bytes` an output column) stays under STRIP_MAX_BYTES: the image is upscaled
    band by band, each over all window rows. A 200 MP scan's strip across its whole 65,000 px wide output
    was 400 MB (800 MB for 16-bit). One band (the whole width, the order the tiles always ran in) when
    column_bytes is 0 (an output in memory: its strip is smaller than the output anyway), the strip fits,
    or a band would overlap the next but one (it only shares columns with its neighbours)."""
    count = len(cols.starts)
    whole = [(0, count)]
    if column_bytes <= 0 or count < 2:
        return whole
    width = STRIP_MAX_BYTES // column_bytes  # output columns a band may span
    if (cols.starts[-1] + cols.length) * scale <= width:
        return whole
    bands, first = [], 0
    while first < count:
        last = first + 1
        while last < count and (cols.starts[last] + cols.length - cols.starts[first]) * scale <= width:
            last += 1
        bands.append((first, last))
        first = last
    for (_, before_last), (after_first, _) in zip(bands, bands[2:], strict=False):
        if cols.starts[before_last - 1] + cols.length > cols.starts[after_first]:
            return whole
    return bands


class _Strip:
    """Accumulator for the output rows still being blended; finished rows go to `output`.

    Capacity is one window row (tile * scale output rows): blending never holds the whole image. For an
    8-bit output the sums are kept in 16-bit fixed point (1/65519 steps, 256x finer than the output's
    levels, half the memory of float32: 98 MB instead of 196 MB for a 16000 px wide output); 16-bit and
    float outputs accumulate in float32.

    It spans output columns left..right (the whole width, or one band of windows: column_bands). Columns
    from `shared` on are also covered by the next band: their sums go to `carry_out` instead of the
    output, and this band's first columns get the previous band's `carry_in` added before they are
    finished. In 16-bit fixed point the sums are integers, so 8-bit outputs are the same in any order."""

    def __init__(
        self,
        output: np.ndarray,
        capacity: int,
        channels: int,
        columns: tuple[int, int, int] | None = None,
        carry_in: np.ndarray | None = None,
        carry_out: np.ndarray | None = None,
    ) -> None:
        self.output = output
        self.channels = channels
        bounds: tuple[int, int, int] = columns or (0, output.shape[1], output.shape[1])
        self.left, self.shared, self.right = bounds
        self.width = self.right - self.left
        self.carry_in, self.carry_out = carry_in, carry_out
        self.top = 0  # output row held in self.rows[0]
        self.fixed_point = output.dtype == np.uint8
        dtype = np.uint16 if self.fixed_point else np.float32
        self.rows = np.zeros((capacity, self.width, channels), dtype)

    def add(
        self, upscaled: np.ndarray, y: int, x: int, row_weight: np.ndarray, col_weight: np.ndarray
    ) -> None:
        bottom = min(y + upscaled.shape[0], self.output.shape[0])
        right = min(x + upscaled.shape[1], self.right)
        h, w = bottom - y, right - x  # windows of short images reach past the image (reflected pixels)
        weight = row_weight[:h, None] * col_weight[None, :w]
        values = upscaled[:h, :w]
        if self.channels == 1:
            values = values.mean(axis=2, keepdims=True)
        target = self.rows[y - self.top : bottom - self.top, x - self.left : right - self.left]
        if self.fixed_point:
            # In place on one float temporary: a 4x tile is ~40 MB of float32, and each extra temporary
            # counted in the peak RSS of a big photo.
            share = np.clip(values, 0.0, 1.0)
            share *= weight[:, :, None] * np.float32(_FIXED_ONE)
            target += np.rint(share, out=share).astype(np.uint16)
        else:
            target += values * weight[:, :, None]

    def flush_until(self, row: int) -> None:
        """Rows above `row` get no more contributions: convert them and slide the rest up."""
        count = row - self.top
        if count <= 0:
            return
        kept = self.shared - self.left  # columns finished by this band
        for first in range(0, count, _FLUSH_ROWS):  # in slices: the float temporaries stay small
            last = min(count, first + _FLUSH_ROWS)
            block = self.rows[first:last]
            rows = slice(self.top + first, self.top + last)
            if self.carry_in is not None:
                block[:, : self.carry_in.shape[1]] += self.carry_in[rows]
            if self.carry_out is not None:
                self.carry_out[rows] = block[:, kept:]
            block = block[:, :kept]
            if self.fixed_point:
                block = block.astype(np.float32) * np.float32(1.0 / _FIXED_ONE)
            finished = to_dtype(block, self.output.dtype)
            target = self.output[rows, self.left : self.shared]
            target[:] = finished[:, :, 0] if self.channels == 1 else finished
        for array in (self.output, self.carry_in, self.carry_out):
            if array is not None:
                release_rows(array, self.top, row)  # finished: a disk-backed array leaves memory now
        keep = self.rows.shape[0] - count
        if keep > 0:
            self.rows[:keep] = self.rows[count:].copy()
        self.rows[max(keep, 0) :] = 0
        self.top = row


def run_local(
    array: np.ndarray, network: Callable[[np.ndarray], np.ndarray], tile: int, context: int, scale: int
) -> np.ndarray:
    """Run a network whose receptive radius is at most `context` input pixels over an N x C x H x W
    float32 array in windows of at most tile x tile, stitched with hard cuts: exactly the network's output
    on the whole array (kept pixels see all of their receptive field; border windows see the array's own
    border, as the whole-array call does). For cheap local stages such as RRDBNet's upsampler, whose
    activations at 4x resolution would otherwise be the process's memory peak."""
    height, width = array.shape[2], array.shape[3]
    output: np.ndarray | None = None
    for top, row_from, row_to in _cut_axis(height, tile, context):
        for left, col_from, col_to in _cut_axis(width, tile, context):
            window = np.ascontiguousarray(array[:, :, top : top + tile, left : left + tile])
            result = network(window)
            if output is None:
                output = np.empty((*result.shape[:2], height * scale, width * scale), np.float32)
            kept_rows = slice((row_from - top) * scale, (row_to - top) * scale)
            kept_cols = slice((col_from - left) * scale, (col_to - left) * scale)
            target_rows = slice(row_from * scale, row_to * scale)
            target_cols = slice(col_from * scale, col_to * scale)
            output[:, :, target_rows, target_cols] = result[:, :, kept_rows, kept_cols]
    assert output is not None  # _cut_axis gives at least one window per axis
    return output


def _cut_axis(size: int, tile: int, context: int) -> list[tuple[int, int, int]]:
    """(window start, first kept pixel, end of kept pixels) per window along one axis. Windows are spread
    evenly and overlap by at least 2 * context; each keeps the part up to the middle of its overlaps."""
    if size <= tile:
        return [(0, 0, size)]
    if tile <= 2 * context:
        raise ValueError(f"tile {tile} leaves no kept pixels with {context} px context on each side")
    count = math.ceil((size - tile) / (tile - 2 * context)) + 1
    starts = _spread(size, tile, count)
    cuts = [0, *[(b + a + tile) // 2 for a, b in itertools.pairwise(starts)], size]
    return [(start, cuts[i], cuts[i + 1]) for i, start in enumerate(starts)]


def run_whole(rgb_float: np.ndarray, upscaler: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The whole image through the network in one call (float32 HxWx3 out): the reference tiling is
    measured against. Never used by the pipeline itself."""
    batch = np.ascontiguousarray(rgb_float.transpose(2, 0, 1)[None], dtype=np.float32)
    return np.asarray(upscaler(batch), dtype=np.float32)[0].transpose(1, 2, 0)
