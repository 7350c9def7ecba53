"""One table of image files, good and bad, with what the pipeline says about each.

load_image (the inbox path) and probe (uploads, intake) must agree on every case: the same files are
accepted, and the same ones refused with the same error type. Tests of other areas (uploads) import
IMAGE_CASES to check that they follow the same table.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pillow_heif
import tifffile
from PIL import Image as PILImage

from pipeline.types import (
    AbsurdDimensionsError,
    BadImageError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    NotAnImageError,
    UnsupportedFormatError,
)

pillow_heif.register_heif_opener()  # only to WRITE the HEIC case; the pipeline registers it itself
ORIENTATION = 0x0112
DEFAULT_LIMIT = 50_000_000


@dataclass(frozen=True)
class ImageCase:
    name: str
    data: bytes
    error: type[BadImageError] | None  # None: accepted
    size: tuple[int, int] | None = None  # upright (width, height) when accepted
    format: str | None = None  # pipeline format name when accepted
    max_pixels: int = DEFAULT_LIMIT


def pattern(height: int, width: int, channels: int = 3) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    planes = [x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x * 7 + y * 3) % 256, x % 256]
    return np.dstack(planes[:channels]).astype(np.uint8)


def encoded(pixels: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def exif_orientation(orientation: int) -> PILImage.Exif:
    exif = PILImage.Exif()
    exif[ORIENTATION] = orientation
    return exif


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by an empty IDAT and IEND (crafted header)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def gif_frames(screen: tuple[int, int], frames: list[tuple[int, int]]) -> bytes:
    """A GIF whose logical screen is `screen` and whose frames' descriptors claim (width, height) each,
    with a few bytes of pixel data behind each (crafted headers, like Pillow's decompression_bomb.gif:
    a 1x1 screen with one frame of 65535x65535 claims 4.3 G pixels in 40 bytes)."""
    palette = b"\x00\x00\x00\xff\xff\xff"
    data = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + palette
    for width, height in frames:
        data += b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return data + b";"


def gif_with_a_huge_second_frame(width: int, height: int) -> bytes:
    """A real 16x16 GIF followed by a second frame whose descriptor claims width x height (Pillow's
    decompression_bomb_extents.gif): the first frame is what a restore and a preview use."""
    buffer = io.BytesIO()
    PILImage.new("P", (16, 16), 1).save(buffer, "GIF")
    first = buffer.getvalue().removesuffix(b";")
    return first + b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"


def webp_canvas_only(width: int, height: int) -> bytes:
    """A WebP holding only a VP8X chunk whose canvas is width x height (up to 2^24 a side)."""
    vp8x = bytes(4) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


def tiff_header_only(width: int, height: int) -> bytes:
    """A little-endian TIFF whose one IFD claims width x height 8-bit gray, with one byte of strip."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8)]
    tags += [(278, 4, height), (279, 4, 1)]
    entries = b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + bytes(4)


def _tiff16(pixels: np.ndarray, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, pixels, photometric="rgb", extratags=[(ORIENTATION, "H", 1, orientation, True)], metadata=None
    )
    return buffer.getvalue()


def _corrupt_png_crc() -> bytes:
    data = bytearray(encoded(pattern(16, 16), "PNG"))
    data[-20] ^= 0xFF  # inside IDAT: its CRC no longer matches
    return bytes(data)


def _build() -> list[ImageCase]:
    photo = pattern(30, 40)
    jpeg = encoded(photo, "JPEG", quality=90)
    png = encoded(photo, "PNG")
    heic = encoded(photo, "HEIF", quality=90)
    webp = encoded(photo, "WEBP", lossless=True)
    return [
        ImageCase("jpeg", jpeg, None, (40, 30), "jpg"),
        ImageCase("png", png, None, (40, 30), "png"),
        ImageCase("png rgba", encoded(pattern(30, 40, 4), "PNG"), None, (40, 30), "png"),
        ImageCase("webp", webp, None, (40, 30), "webp"),
        ImageCase("tiff", encoded(photo, "TIFF"), None, (40, 30), "tiff"),
        ImageCase("tiff 16-bit", _tiff16(photo.astype(np.uint16) * 257), None, (40, 30), "tiff"),
        ImageCase("bmp", encoded(photo, "BMP"), None, (40, 30), "bmp"),
        ImageCase("gif", encoded(photo, "GIF"), None, (40, 30), "gif"),
        ImageCase("heic", heic, None, (40, 30), "heic"),
        ImageCase(
            "jpeg rotated by exif",
            encoded(photo, "JPEG", exif=exif_orientation(6).tobytes()),
            None,
            (30, 40),
            "jpg",
        ),
        ImageCase(
            "tiff rotated by its tag",
            encoded(photo, "TIFF", exif=exif_orientation(8)),
            None,
            (30, 40),
            "tiff",
        ),
        ImageCase("tiff 16-bit rotated", _tiff16(photo.astype(np.uint16) * 257, 5), None, (30, 40), "tiff"),
        # 500:1 is a scanned film strip or a panorama slice, not an attack: both paths take it.
        ImageCase("aspect 500:1", encoded(pattern(2, 1000), "PNG"), None, (1000, 2), "png"),
        ImageCase("at the pixel limit", png, None, (40, 30), "png", max_pixels=1200),
        ImageCase("empty", b"", EmptyFileError),
        ImageCase("text", b"hello, this is not a picture", NotAnImageError),
        ImageCase("photoshop", b"8BPS" + bytes(60), UnsupportedFormatError),
        ImageCase("pdf", b"%PDF-1.7\n" + bytes(60), UnsupportedFormatError),
        ImageCase("truncated jpeg", jpeg[: len(jpeg) * 2 // 3], CorruptImageError),
        ImageCase("jpeg without end marker", jpeg[:-2], CorruptImageError),
        ImageCase("truncated png", png[: len(png) // 2], CorruptImageError),
        ImageCase("png chunk checksum", _corrupt_png_crc(), CorruptImageError),
        ImageCase("damaged png header", png[:12] + b"XXXX" + png[16:], CorruptImageError),
        ImageCase("one pixel over the limit", png, DecompressionBombError, max_pixels=1199),
        ImageCase("60000x60000 header", png_header_only(60_000, 60_000), DecompressionBombError),
        ImageCase("aspect 2000:1", png_header_only(2000, 1), AbsurdDimensionsError),
        ImageCase("side over 100000", png_header_only(200_000, 400), AbsurdDimensionsError),
        ImageCase("zero width", png_header_only(0, 10), CorruptImageError),
        # Hostile headers a share user may drop (issue 18, item 4): bombs in each format's own way,
        # headers with nothing behind them, a known magic in front of noise.
        ImageCase(
            "gif frame of 65535x65535 on a 1x1 screen",
            gif_frames((1, 1), [(65535, 65535)]),
            DecompressionBombError,
        ),
        ImageCase("gif screen of 65535x65535", gif_frames((65535, 65535), [(1, 1)]), DecompressionBombError),
        ImageCase(
            "gif with a 65535x65535 second frame",
            gif_with_a_huge_second_frame(65535, 65535),
            None,
            (16, 16),
            "gif",
        ),
        ImageCase("webp canvas of 16384x16384 only", webp_canvas_only(16384, 16384), CorruptImageError),
        ImageCase("tiff header of 40000x40000", tiff_header_only(40_000, 40_000), DecompressionBombError),
        ImageCase(
            "tiff header of 2^32-1 a side", tiff_header_only(2**32 - 1, 2**32 - 1), AbsurdDimensionsError
        ),
        ImageCase("jpeg header only", jpeg[:300], CorruptImageError),
        ImageCase("jpeg magic then noise", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, CorruptImageError),
        ImageCase("heic with a broken header", heic[:40] + bytes(60), CorruptImageError),
        ImageCase("truncated webp", webp[: len(webp) // 2], CorruptImageError),
    ]


IMAGE_CASES: list[ImageCase] = _build()
