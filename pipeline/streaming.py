"""Encoding a disk-assembled output (pipeline.scratch) to a file a strip at a time, in bounded memory.

The in-memory encoders (pipeline.imageio.encode_image) hand the whole array to OpenCV or Pillow and get
the whole file back as bytes: for a 560 MP output that is 1.7 GB of pixels touched at once plus the
encoded file in memory. Here the pixels are read ~16 MB at a time (each strip released from memory when
done) and the file is written as it is produced:

- JPEG: each strip is encoded by OpenCV as a JPEG of its own (same quality, sampling, standard Huffman
  tables), and their entropy-coded data are joined with restart markers (RSTn) under one header whose
  height is the whole image's, with a DRI segment of one strip's MCU count. A restart resets exactly
  what a new JPEG starts from (the DC predictions, byte alignment), so the decoded pixels equal those of
  the whole-image encode; only the entropy coding around the markers differs.
- PNG: rows filtered with numpy (per row the filter with the least sum of absolute values, the heuristic
  libpng uses), one zlib stream across the strips, IDAT chunks as it goes.
- TIFF: tifffile from an iterator of strips compressed here (zlib, the same codec as today's output).
- WebP holds at most 16383 px a side and libwebp needs the whole picture: it is encoded in memory.

Metadata goes through the same writers as in memory (pipeline/metadata.py): spliced into the JPEG or
PNG header before the first strip, or appended to the finished TIFF as a new IFD0.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import cv2
import numpy as np

from pipeline import metadata
from pipeline.imageio import OUTPUT_FORMATS, _as_output_pixels, encode_image, output_metadata
from pipeline.scratch import release_rows, row_strips
from pipeline.types import Image

_MAX_RESTART_INTERVAL = 65535  # DRI holds 16 bits
_IDAT_BYTES = 1024 * 1024
_FILTER_BYTES = 2 * 1024 * 1024  # rows filtered at a time


def encode_to_file(
    image: Image, fmt: str, target: BinaryIO, quality: int = 95, strip_gps: bool = False
) -> None:
    """Write `image` as `fmt` into `target` (at its current position), the pixels read a strip at a
    time. Same formats, conversions and metadata as encode_image."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    carried = output_metadata(image, strip_gps)
    strips = _StripReader(image, fmt)
    if fmt == "jpg":
        _write_jpeg(strips, target, quality, carried)
    elif fmt == "png":
        _write_png(strips, target, carried)
    elif fmt == "tiff":
        _write_tiff(strips, target, carried)
    else:
        target.write(encode_image(image, fmt, quality=quality, strip_gps=strip_gps))


class _StripReader:
    """The output's rows, strip by strip, converted for the format exactly as encode_image converts the
    whole image (16 -> 8 bit for JPEG/WebP, alpha flattened on white for JPEG, gray+alpha as LA)."""

    def __init__(self, image: Image, fmt: str) -> None:
        self.image = image
        self.fmt = fmt
        probe = self._convert(image.pixels[:1])
        self.dtype = probe.dtype
        self.channels = 1 if probe.ndim == 2 else probe.shape[2]
        self.height, self.width = image.height, image.width

    def strips(self, multiple: int = 1, max_rows: int | None = None) -> Iterator[np.ndarray]:
        row_bytes = self.width * self.channels * self.dtype.itemsize
        for first, last in row_strips(self.height, row_bytes, multiple, max_rows):
            rows = np.array(self.image.pixels[first:last])  # a copy in memory; the mapping is let go
            release_rows(self.image.pixels, first, last)
            yield self._convert(rows)

    def _convert(self, rows: np.ndarray) -> np.ndarray:
        part = Image(pixels=rows, original_mode=self.image.original_mode)
        pixels = _as_output_pixels(part, self.fmt)
        if pixels.ndim == 3 and pixels.shape[2] == 4 and self.image.original_mode in ("LA", "La"):
            # As imageio._to_pillow: the mean of the replicated gray, then alpha.
            gray = pixels[:, :, :3].mean(axis=2).round().astype(pixels.dtype)
            pixels = np.dstack([gray, pixels[:, :, 3]])
        return pixels


# -- JPEG ----------------------------------------------------------------------------------------------


def _write_jpeg(
    strips: _StripReader, target: BinaryIO, quality: int, carried: metadata.OutputMetadata
) -> None:
    subsampled = quality < 90  # as encode_image: 4:4:4 at high quality, 4:2:0 below
    mcu = 16 if subsampled and strips.channels == 3 else 8
    mcus_per_row = -(-strips.width // mcu)
    max_rows = max(1, _MAX_RESTART_INTERVAL // mcus_per_row) * mcu
    sampling = cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420 if subsampled else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    interval = 0
    for number, strip in enumerate(strips.strips(mcu, max_rows)):
        encoded = _encode_cv2(strip, ".jpg", params)
        header_end, scan_end = _jpeg_scan_bounds(encoded)
        if number == 0:
            interval = mcus_per_row * (strip.shape[0] // mcu)
            header = _jpeg_header(encoded[:header_end], strips.height, interval)
            target.write(metadata.jpeg_with_metadata(header, carried))
        else:
            target.write(bytes((0xFF, 0xD0 + (number - 1) % 8)))
        target.write(encoded[header_end:scan_end])
    target.write(b"\xff\xd9")


def _encode_cv2(pixels: np.ndarray, extension: str, params: list[int]) -> memoryview:
    bgr = pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(extension, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {extension} strip")
    return encoded.reshape(-1).data


def _jpeg_scan_bounds(data: memoryview) -> tuple[int, int]:
    """(end of the SOS segment, start of EOI): the entropy-coded data of a single-scan baseline JPEG."""
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            end = len(data) - 2
            if bytes(data[end:]) != b"\xff\xd9":
                raise ValueError("OpenCV's JPEG strip does not end with EOI")
            return position + 2 + length, end
        position += 2 + length
    raise ValueError("OpenCV's JPEG strip has no scan")


def _jpeg_header(header: memoryview, height: int, interval: int) -> bytes:
    """The first strip's header with the whole image's height in SOF0 and a DRI segment before SOS."""
    data = bytearray(header)
    position = 2
    while position + 4 <= len(data):
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xC0:  # SOF0: precision (1 byte), then height (2 bytes)
            data[position + 5 : position + 7] = struct.pack(">H", height)
        if marker == 0xDA:
            dri = b"\xff\xdd" + struct.pack(">HH", 4, interval)
            return bytes(data[:position]) + dri + bytes(data[position:])
        position += 2 + length
    raise ValueError("OpenCV's JPEG strip has no SOS segment")


# -- PNG -----------------------------------------------------------------------------------------------

_PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA


def _write_png(strips: _StripReader, target: BinaryIO, carried: metadata.OutputMetadata) -> None:
    depth = 16 if strips.dtype == np.uint16 else 8
    ihdr = struct.pack(
        ">IIBBBBB", strips.width, strips.height, depth, _PNG_COLOUR_TYPES[strips.channels], 0, 0, 0
    )
    header = b"\x89PNG\r\n\x1a\n" + metadata.png_chunk(b"IHDR", ihdr)
    target.write(metadata.png_with_metadata(header, carried))
    bytes_per_pixel = strips.channels * depth // 8
    compressor = zlib.compressobj(6)
    previous = np.zeros(strips.width * bytes_per_pixel, np.uint8)
    pending = bytearray()
    for strip in strips.strips():
        raw = strip.astype(">u2", copy=False) if depth == 16 else strip
        rows = np.ascontiguousarray(raw).view(np.uint8).reshape(strip.shape[0], -1)
        step = max(1, _FILTER_BYTES // rows.shape[1])  # the five candidates stay a few MB
        for first in range(0, rows.shape[0], step):
            block = rows[first : first + step]
            pending += compressor.compress(_filter_rows(block, previous, bytes_per_pixel))
            previous = block[-1]
        pending = _flush_idat(target, pending)
    pending += compressor.flush()
    _flush_idat(target, pending, final=True)
    target.write(metadata.png_chunk(b"IEND", b""))


def _flush_idat(target: BinaryIO, pending: bytearray, final: bool = False) -> bytearray:
    while len(pending) >= _IDAT_BYTES or (final and pending):
        target.write(metadata.png_chunk(b"IDAT", bytes(pending[:_IDAT_BYTES])))
        del pending[:_IDAT_BYTES]
    return pending


def _filter_rows(rows: np.ndarray, previous: np.ndarray, bpp: int) -> bytes:
    """Each row prefixed with its filter type and filtered by the one of the five PNG filters whose
    output has the least sum of absolute (signed) values: libpng's adaptive heuristic."""
    up = np.vstack([previous[None], rows[:-1]])
    left = np.zeros_like(rows)
    left[:, bpp:] = rows[:, :-bpp]
    upper_left = np.zeros_like(rows)
    upper_left[:, bpp:] = up[:, :-bpp]
    candidates = np.stack(
        [
            rows,
            rows - left,
            rows - up,
            rows - ((left.astype(np.uint16) + up) >> 1).astype(np.uint8),
            rows - _paeth(left, up, upper_left),
        ]
    )
    # |signed byte| without a wider copy: min(v, 256 - v) in uint8 (0 - v wraps), summed in uint32.
    cost = np.minimum(candidates, 0 - candidates).sum(axis=2, dtype=np.uint32)
    choice = cost.argmin(axis=0)
    chosen = candidates[choice, np.arange(rows.shape[0])]
    return np.hstack([choice.astype(np.uint8)[:, None], chosen]).tobytes()


def _paeth(left: np.ndarray, up: np.ndarray, upper_left: np.ndarray) -> np.ndarray:
    a, b, c = left.astype(np.int16), up.astype(np.int16), upper_left.astype(np.int16)
    estimate = a + b - c
    pa, pb, pc = np.abs(estimate - a), np.abs(estimate - b), np.abs(estimate - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c)).astype(np.uint8)


# -- TIFF ----------------------------------------------------------------------------------------------


def _write_tiff(strips: _StripReader, target: BinaryIO, carried: metadata.OutputMetadata) -> None:
    """tifffile writes the pixels from strips compressed here; the metadata is appended afterwards by
    pipeline.metadata.add_tiff_metadata (a new IFD0 at the end: no pixel byte moves)."""
    import tifffile

    row_bytes = strips.width * strips.channels * strips.dtype.itemsize
    rows_per_strip = next(row_strips(strips.height, row_bytes))[1]
    shape: tuple[int, ...] = (strips.height, strips.width)
    if strips.channels > 1:
        shape = (*shape, strips.channels)
    compressed = (zlib.compress(np.ascontiguousarray(s).tobytes(), 6) for s in strips.strips())
    start = target.tell()
    tifffile.imwrite(
        target,
        data=compressed,
        shape=shape,
        dtype=strips.dtype,
        photometric="minisblack" if strips.channels in (1, 2) else "rgb",
        extrasamples=("unassalpha",) if strips.channels in (2, 4) else None,
        planarconfig="contig",
        rowsperstrip=rows_per_strip,
        compression="zlib",
        software=False,  # the Software tag is the metadata's (this program), not the library's
        metadata=None,
        bigtiff=strips.height * row_bytes > 2**31,
    )
    target.seek(0, 2)
    metadata.add_tiff_metadata(target, carried, start)
    target.seek(0, 2)
