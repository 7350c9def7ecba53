"""Decoding a large input straight into a disk-backed array (pipeline/scratch.py), in bounded memory.

Pillow decodes into its own image memory, 4 bytes a pixel for RGB, and the numpy copy taken from it is
3 more: a 200 MP scan peaked at 1.4 GB in the decode alone. Here the picture's image memory is a mapping
of an unlinked file in the scratch folder (Pillow's `map_buffer`, the way Pillow itself maps uncompressed
files), so the decoder writes its rows into the file; after every MB of compressed data it reads, every
page it wrote is dropped from the process (pipeline.scratch.release_all), so RSS stays at the decoder's
own buffers whatever the picture's size. It is the same decoder (Pillow's libjpeg / zlib), so the pixels
are the ones the in-memory path gets. RGB (stored by Pillow as RGBX) is then packed to RGB a strip at a
time, so everything after the decode sees the same contiguous HxWx3 array as before.

16-bit RGB(A) PNG, which Pillow reduces to 8 bits, is decoded twice by the same decoder: once keeping
each sample's high byte ("RGB;16B", what Pillow does) and once its low byte (the little-endian unpacker
"RGB;16L" takes the second byte of each big-endian sample), joined strip by strip: the exact 16-bit
values OpenCV's whole-image decode gives, with no whole copy in memory.

Striped TIFF (uncompressed or deflate, 8 or 16 bits): tifffile reads the layout, each strip is inflated
here (bounded by its rows' size) and written into the array.

Not decoded here (None: the caller's in-memory path, as before): palette, CMYK and other converted modes,
key-colour transparency, 16-bit gray+alpha PNG, WebP and HEIC (their libraries decode the whole picture
in one call), tiled, LZW- or JPEG-compressed TIFF (Pillow's libtiff decodes those whole). Progressive
JPEG goes through here, but libjpeg holds the whole picture's coefficients while it decodes one (2 bytes
a sample): a progressive 200 MP JPEG still peaks at about 1.2 GB.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageFile

from pipeline.scratch import DiskDecode, disk_array, release_all, release_rows, row_strips

# Pillow's image memory per mode: bytes a pixel, and the numpy shape/dtype of the decoded picture.
_PIXEL_BYTES = {"L": 1, "I;16": 2, "I;16L": 2, "LA": 4, "RGB": 4, "RGBA": 4}
_RELEASE_READS = 16  # Pillow reads 64 KB at a time: the written pages are dropped every 1 MB read


class HookedBytes(io.BytesIO):
    """The file's bytes as Pillow reads them, calling `after_read` (when set) after each read: lets a
    decode into a disk-backed array drop the rows it has written while it runs."""

    after_read: Callable[[], None] | None = None

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if self.after_read is not None:
            self.after_read()
        return chunk


def decode_to_disk(picture: PILImage.Image, data: bytes, kind: str, scratch: DiskDecode) -> np.ndarray | None:
    """The picture's pixels (as stored: orientation not applied) in an array on disk, when they are more
    than this process keeps in memory and the format and mode have a bounded-memory decode here; else
    None, the picture untouched."""
    width, height = picture.size
    if kind == "tiff":
        return _tiff_to_disk(data, width, height, scratch)
    mode = picture.mode
    if kind not in ("jpg", "png", "bmp") or mode not in _PIXEL_BYTES or "transparency" in picture.info:
        return None
    if not isinstance(picture, ImageFile.ImageFile) or not isinstance(picture.fp, HookedBytes):
        return None
    if len(picture.tile) != 1:
        return None
    sixteen_bit_png = kind == "png" and data[24] == 16
    if sixteen_bit_png and data[25] == 4:  # 16-bit gray+alpha: no 16-bit Pillow mode for it
        return None
    if sixteen_bit_png and data[25] in (2, 6):
        if not scratch.wants_disk(width * height * _PIXEL_BYTES[mode] * 2):
            return None
        return _png16_to_disk(picture, data, scratch.folder)
    if not scratch.wants_disk(width * height * _PIXEL_BYTES[mode]):
        return None
    stored = _decode_into_file(picture, scratch.folder)
    if mode == "RGB":
        return _packed(stored, 3, scratch.folder)
    return stored


def _decode_into_file(picture: ImageFile.ImageFile, folder: Path, rawmode: str | None = None) -> np.ndarray:
    """Run Pillow's own decoder for `picture` with its image memory in a scratch file; `rawmode`
    replaces the tile's (the 16-bit PNG's low-byte pass). Returns HxW (L, I;16) or HxWx4 (the rest)."""
    width, height = picture.size
    mode = picture.mode
    pixel_bytes = _PIXEL_BYTES[mode]
    target = disk_array((height, width * pixel_bytes), np.uint8, folder)
    if rawmode is not None:
        tile = picture.tile[0]
        args = (rawmode, *tile.args[1:]) if isinstance(tile.args, tuple) else rawmode
        picture.tile = [tile._replace(args=args)]
    reader = picture.fp
    assert isinstance(reader, HookedBytes)
    per_byte = target.nbytes / max(1, len(reader.getbuffer()) - reader.tell())
    reads, released_at = 0, reader.tell()

    def drop_written_rows() -> None:
        nonlocal reads, released_at
        reads += 1
        if reads % _RELEASE_READS == 0:
            position = reader.tell()
            release_all(target, int((position - released_at) * per_byte))  # about what was written
            released_at = position

    picture.im = PILImage.core.map_buffer(  # type: ignore[attr-defined]  # Pillow's C core: no hints
        target, picture.size, "raw", 0, (mode, 0, 1)
    )
    reader.after_read = drop_written_rows
    try:
        picture.load()
    finally:
        reader.after_read = None
    release_all(target)
    if pixel_bytes == 1:
        return target
    if pixel_bytes == 2:
        return target.view(np.uint16)  # Pillow's I;16 is little-endian, numpy's native order here
    return target.reshape(height, width, 4)


def _packed(stored: np.ndarray, channels: int, folder: Path) -> np.ndarray:
    """The first `channels` of HxWx4 `stored`, as a contiguous HxWxchannels array on disk."""
    height, width = stored.shape[:2]
    packed = disk_array((height, width, channels), stored.dtype, folder)
    for first, last in row_strips(height, width * 4 * stored.itemsize):
        packed[first:last] = stored[first:last, :, :channels]
        release_rows(stored, first, last)
        release_rows(packed, first, last)
    return packed


def upright_on_disk(stored: np.ndarray, upright: np.ndarray, folder: Path) -> np.ndarray:
    """`upright` (a rotated or flipped view of the disk-backed `stored`) copied into a new array on disk
    a strip at a time, both mappings released after each: the rest of the pipeline reads rows."""
    copy = disk_array(upright.shape, upright.dtype, folder)
    row_bytes = upright.strides[0] if upright.strides[0] > 0 else -upright.strides[0]
    for first, last in row_strips(upright.shape[0], max(row_bytes, copy.strides[0])):
        copy[first:last] = upright[first:last]
        release_all(stored)  # a rotated strip reads a column band: pages of every stored row
        release_rows(copy, first, last)
    return copy


def _png16_to_disk(picture: ImageFile.ImageFile, data: bytes, folder: Path) -> np.ndarray:
    """16-bit RGB(A) PNG: the high bytes (Pillow's own decode) and the low bytes (the same decode with
    the little-endian unpacker) joined into HxWx3 (or 4) uint16."""
    channels = 4 if picture.mode == "RGBA" else 3
    high_mode, low_mode = (f"{picture.mode};16B", f"{picture.mode};16L")
    high = _decode_into_file(picture, folder, high_mode)
    second = PILImage.open(HookedBytes(data))
    with second:
        low = _decode_into_file(second, folder, low_mode)
    height, width = high.shape[:2]
    joined = disk_array((height, width, channels), np.uint16, folder)
    for first, last in row_strips(height, width * 4 * 2):
        rows = high[first:last, :, :channels].astype(np.uint16)
        rows <<= 8
        rows |= low[first:last, :, :channels]
        joined[first:last] = rows
        for array in (high, low, joined):
            release_rows(array, first, last)
    return joined


def _tiff_to_disk(data: bytes, width: int, height: int, scratch: DiskDecode) -> np.ndarray | None:
    """The first page of a striped TIFF (uncompressed or deflate, with or without the horizontal
    predictor: what scanners write), decoded a strip at a time into an array on disk; None for anything
    else (tiles, LZW, JPEG, planar...: Pillow decodes it as before). The strips are inflated here, each
    to no more than its rows' size: a crafted strip cannot inflate to gigabytes (tifffile's would)."""
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        page = tiff.pages.first
        shape, dtype = tuple(page.shape), np.dtype(page.dtype).newbyteorder(tiff.byteorder)
        if not _plain_tiff_layout(page, shape, dtype, width, height):
            return None
        if not scratch.wants_disk(int(np.prod(shape)) * dtype.itemsize):
            return None
        strips = list(zip(page.dataoffsets, page.databytecounts, strict=True))
        rows_per_strip = int(page.rowsperstrip or height)
        compression, predictor = int(page.compression), int(page.predictor)
    samples = shape[2] if len(shape) == 3 else 1
    pixels = disk_array(shape, dtype.newbyteorder("="), scratch.folder)
    for number, (offset, count) in enumerate(strips):
        first = number * rows_per_strip
        rows = min(rows_per_strip, height - first)
        if rows <= 0:
            break
        size = rows * width * samples * dtype.itemsize
        raw = _inflated(data[offset : offset + count], compression, size)
        if len(raw) != size:
            raise ValueError(f"TIFF strip {number} holds {len(raw)} bytes, not {size}")
        strip = np.frombuffer(raw, dtype).reshape(rows, width, samples).astype(pixels.dtype)
        if predictor == 2:  # horizontal differencing: each sample minus its left neighbour
            strip = np.cumsum(strip, axis=1, dtype=strip.dtype)  # wraps as the predictor did
        pixels[first : first + rows] = strip if samples > 1 else strip[:, :, 0]
        release_rows(pixels, first, first + rows)
    return pixels


def _inflated(raw: bytes, compression: int, size: int) -> bytes:
    if compression == 1:
        return raw[:size]
    inflater = zlib.decompressobj()
    return inflater.decompress(raw, size)  # at most `size` bytes, whatever the strip inflates to


def _plain_tiff_layout(
    page: object, shape: tuple[int, ...], dtype: np.dtype, width: int, height: int
) -> bool:
    """Striped gray or RGB(A) samples that come out as Pillow's path gives them (no conversion there)."""
    if dtype.kind != "u" or dtype.itemsize not in (1, 2) or shape[:2] != (height, width):
        return False
    if getattr(page, "is_tiled", True) or getattr(page, "planarconfig", 1) != 1:
        return False
    if int(getattr(page, "compression", 0)) not in (1, 8, 32946) or getattr(page, "predictor", 1) not in (
        1,
        2,
    ):
        return False
    if getattr(page, "imagedepth", 1) != 1 or getattr(page, "fillorder", 1) != 1:
        return False
    photometric = int(getattr(page, "photometric", -1))
    if len(shape) == 2:
        return photometric == 1  # min-is-black gray
    if len(shape) != 3 or photometric != 2 or shape[2] not in (3, 4):
        return False
    # 8-bit premultiplied alpha is converted by Pillow (RGBa -> RGBA): not raw samples.
    return shape[2] == 3 or dtype.itemsize == 2 or tuple(getattr(page, "extrasamples", ())) == (2,)
