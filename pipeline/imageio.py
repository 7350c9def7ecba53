"""Reading and writing images without losing anything on the way.

Reading (`load_image`) checks, in this order, so that no input can crash or hang the pipeline:
  empty -> magic bytes (not an image / unsupported format) -> header only: dimensions (absurd, then the
  decompression-bomb pixel limit, BEFORE any pixel is decoded) -> structural truncation (JPEG without an
  end-of-image marker after its scan, PNG without IEND) -> a full decode with Pillow's
  LOAD_TRUNCATED_IMAGES forced off, so a half-loaded file is refused instead of being padded with grey.

What is kept: 16-bit depth (PNG/TIFF, decoded with OpenCV/tifffile because Pillow reduces 16-bit colour
to 8 bits), grayscale, alpha, the ICC profile and the metadata (EXIF, XMP, IPTC, Photoshop resources:
captured here, edited and written by pipeline/metadata.py). EXIF orientation is applied to the pixels (all
8 cases) and reset to 1, so the output is upright everywhere. What is converted, each with a note in
Image.notes: palette -> RGB(A), 1-bit -> 8-bit gray, CMYK -> RGB (through its ICC profile when it has
one, which is then dropped because it describes CMYK), 32-bit int / float gray -> 16-bit, animated
GIF/WebP and multi-page TIFF -> first frame.

Writing (`encode_image`) produces PNG, JPEG, WebP or TIFF bytes with the ICC profile and the metadata
(GPS optionally removed) in each format's own place, updated to the output's size. Output format "same"
keeps the input's format except HEIC -> JPEG (Pillow has no HEIC writer we can rely on, and JPEG opens
everywhere; PNG when there is alpha) and GIF/BMP -> PNG (GIF's 256 colours would destroy the upscaled
picture; BMP is uncompressed and 16x larger after a 4x upscale).
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageCms, ImageFile, UnidentifiedImageError

from pipeline import metadata
from pipeline.disk_decode import HookedBytes, decode_to_disk, upright_on_disk
from pipeline.scratch import DiskDecode, is_disk_backed
from pipeline.types import (
    AbsurdDimensionsError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    Image,
    ImageInfo,
    NotAnImageError,
    UnsupportedFormatError,
)

# Output formats and the extension written for each; input-only formats map to their usual extension.
FORMAT_EXTENSIONS: dict[str, str] = {
    "jpg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "tiff": ".tif",
    "heic": ".heic",
    "bmp": ".bmp",
    "gif": ".gif",
}
OUTPUT_FORMATS = ("png", "jpg", "webp", "tiff")
# The one list of file name extensions of the formats load_image reads, with each one's format: what a
# folder scan (`restorer restore`, `restorer eval`) takes, the names uploads keep, the media type a
# file is served with (the content is still checked on load).
SUFFIX_FORMATS: dict[str, str] = {
    ".jpg": "jpg",
    ".jpeg": "jpg",
    ".jpe": "jpg",
    ".png": "png",
    ".webp": "webp",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".bmp": "bmp",
    ".heic": "heic",
    ".heif": "heic",
    ".gif": "gif",
}
INPUT_EXTENSIONS = frozenset(SUFFIX_FORMATS)
MEDIA_TYPES: dict[str, str] = {
    "jpg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "tiff": "image/tiff",
    "bmp": "image/bmp",
    "heic": "image/heic",
    "gif": "image/gif",
}

DEFAULT_MAX_PIXELS = 200_000_000  # load_image's limit when the caller sets none (settings set their own)
MAX_SIDE = 100_000  # pixels; beyond this no real photo exists, only crafted headers
MAX_ASPECT = 1_000  # a 1x2000 "image" is a broken or hostile header, not a photo
_ORIENTATION = 0x0112
_TRANSPOSING = (5, 6, 7, 8)  # orientations that swap width and height
_GPS_IFD = 0x8825
# IFD0 tags that describe the photo (kept from TIFF inputs, whose IFD0 otherwise holds strip offsets).
_DESCRIPTIVE_TAGS = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)

_PIL_FORMATS = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "TIFF": "tiff",
    "BMP": "bmp",
    "DIB": "bmp",
    "HEIF": "heic",
    "GIF": "gif",
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_UNSUPPORTED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"8BPS", 0, "Photoshop PSD"),
    (b"\x00\x00\x00\x0cjP  ", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
    (b"v/1\x01", 0, "OpenEXR"),
    (b"#?RADIANCE", 0, "Radiance HDR"),
    (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DirectDraw Surface"),
    (b"\x00\x00\x01\x00", 0, "Windows icon"),
    (b"%PDF", 0, "PDF"),
    (b"<svg", 0, "SVG"),
    (b"avif", 8, "AVIF"),
    (b"avis", 8, "AVIF"),
)
SUPPORTED_NAMES = "JPEG, PNG, WebP, TIFF, BMP, HEIC/HEIF or GIF"


def load_image(
    source: Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, scratch: DiskDecode | None = None
) -> Image:
    """Decode a file (path or bytes) into an upright Image; raises BadImageError subclasses.

    scratch: where a picture too large for this process's memory is decoded to (an array on disk,
    pipeline/disk_decode.py); None keeps every picture in memory."""
    data = source.read_bytes() if isinstance(source, Path) else bytes(source)
    with _opened(HookedBytes(data), max_pixels) as (picture, kind):  # hooked: a decode to disk drops rows
        return _decode(picture, data, kind, scratch)


def probe(source: bytes | IO[bytes], max_pixels: int) -> ImageInfo:
    """Format, upright size and mode from the header alone, with exactly load_image's checks and errors
    (everything before the pixel decode: magic bytes, dimensions, pixel limit, structural truncation).

    source: the file's bytes, or the file itself (seekable, binary), which is read in pieces and never
    whole: checking a 200 MB upload costs a few MB of memory, and nothing is decoded. What only a full
    decode finds (damage inside the compressed pixel data) is left to load_image. A PNG's orientation is
    taken from an eXIf chunk before the pixel data only (one after it would cost the decode): the pixel
    count, and so every refusal, is the same either way."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    with _opened(stream, max_pixels) as (picture, kind):
        width, height = _stored_size(picture, kind)
        if _header_orientation(picture, kind) in _TRANSPOSING:
            width, height = height, width
        return ImageInfo(format=kind, width=width, height=height, mode=picture.mode)


@contextmanager
def _opened(stream: IO[bytes], max_pixels: int) -> Iterator[tuple[PILImage.Image, str]]:
    """The checks load_image and probe share, in order, yielding the opened (not decoded) picture."""
    stream.seek(0)
    head = stream.read(_SNIFF_BYTES)
    if not head:
        raise EmptyFileError("empty file (0 bytes)")
    kind = _sniff(head)
    if kind == "heic":
        _register_heif()
    with _strict_pillow():
        try:
            stream.seek(0)
            picture = PILImage.open(stream)
        except UnidentifiedImageError:
            raise CorruptImageError(f"damaged {kind.upper()} header: the file cannot be read") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
            raise CorruptImageError(f"damaged {kind.upper()} header: {_reason(error)}") from None
        with picture:
            _check_dimensions(picture.size, max_pixels)
            actual = _PIL_FORMATS.get(picture.format or "")
            if actual is None:
                raise UnsupportedFormatError(
                    f"{picture.format} files are not supported; use {SUPPORTED_NAMES}"
                )
            _check_structure(stream, actual)
            yield picture, actual  # Pillow seeks to its own offsets when it decodes


_SNIFF_BYTES = 32  # enough for every magic _sniff knows
_READ_BYTES = 1024 * 1024  # what a structure check holds at a time


def sniff_format(head: bytes) -> str:
    """The format a file's first 32 bytes announce ("jpg", "png", ...); raises NotAnImageError or
    UnsupportedFormatError with load_image's words (probe and load_image start with this check)."""
    return _sniff(head)


def _sniff(data: bytes) -> str:
    """The format from magic bytes; raises NotAnImageError / UnsupportedFormatError."""
    head = data[:_SNIFF_BYTES]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "heic"
    for magic, offset, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            raise UnsupportedFormatError(f"{name} files are not supported; use {SUPPORTED_NAMES}")
    raise NotAnImageError(f"not an image: the content is none of {SUPPORTED_NAMES}")


def _register_heif() -> None:
    import pillow_heif  # only where a HEIC file shows up

    pillow_heif.register_heif_opener()


# Pillow's switches are process-wide: threads that probe at once (the daemon's intake and uploads) take
# turns, or one could save another's None and leave Pillow's bomb check off for good.
_PILLOW_SWITCHES = threading.RLock()


@contextmanager
def _strict_pillow() -> Iterator[None]:
    """Decode fully or fail: truncated data is an error, and the pixel limit is ours, checked first.

    Pillow's own bomb check (a warning, then an error at 2x its 89 MP default) would refuse images our
    configurable limit allows, so it is switched off while we open; our check runs on the header."""
    with _PILLOW_SWITCHES:
        saved_truncated, saved_limit = ImageFile.LOAD_TRUNCATED_IMAGES, PILImage.MAX_IMAGE_PIXELS
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        PILImage.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's format quirks are handled below, not printed
                yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved_truncated
            PILImage.MAX_IMAGE_PIXELS = saved_limit


def _check_dimensions(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise AbsurdDimensionsError(f"absurd dimensions {width}x{height}: the image has no pixels")
    if max(width, height) > MAX_SIDE:
        raise AbsurdDimensionsError(f"absurd dimensions {width}x{height}: a side exceeds {MAX_SIDE} pixels")
    if max(width, height) / min(width, height) > MAX_ASPECT:
        raise AbsurdDimensionsError(f"absurd dimensions {width}x{height}: aspect ratio above {MAX_ASPECT}:1")
    if width * height > max_pixels:
        raise DecompressionBombError(
            f"{width}x{height} is {width * height / 1e6:.0f} megapixels, above the limit of "
            f"{max_pixels / 1e6:.0f} (max_input_megapixels)"
        )


def _check_structure(stream: IO[bytes], kind: str) -> None:
    """Catch the truncations a decoder might paper over. The file is read a piece at a time."""
    if kind == "jpg" and not _jpeg_has_end(stream):
        raise CorruptImageError("truncated JPEG: the image data ends before its end-of-image marker")
    if kind == "png":
        _check_png_chunks(stream)


def _check_png_chunks(stream: IO[bytes]) -> None:
    """Every chunk complete and matching its CRC, up to IEND (Pillow does not check IDAT's CRC)."""
    size = stream.seek(0, io.SEEK_END)
    position = 8
    while position + 12 <= size:
        stream.seek(position)
        head = stream.read(8)
        length, kind = int.from_bytes(head[:4], "big"), head[4:8]
        end = position + 12 + length
        if end > size:
            break
        crc = zlib.crc32(kind)
        for piece in _pieces(stream, length):
            crc = zlib.crc32(piece, crc)
        if crc & 0xFFFFFFFF != int.from_bytes(stream.read(4), "big"):
            name = kind.decode("latin-1", errors="replace")
            raise CorruptImageError(f"corrupt PNG: chunk {name} fails its checksum")
        if kind == b"IEND":
            return
        position = end
    raise CorruptImageError("truncated PNG: the file ends before its IEND chunk")


def _pieces(stream: IO[bytes], length: int) -> Iterator[bytes]:
    """The next `length` bytes of the stream, at most _READ_BYTES at a time (fewer if it ends early)."""
    while length > 0 and (piece := stream.read(min(length, _READ_BYTES))):
        length -= len(piece)
        yield piece


def _jpeg_has_end(stream: IO[bytes]) -> bool:
    """Walk the marker segments to the first scan, then look for EOI after it (skipping any EXIF
    thumbnail, which is a whole JPEG with its own EOI inside APP1)."""
    size = stream.seek(0, io.SEEK_END)
    position = 2
    while position + 4 <= size:
        stream.seek(position)
        segment = stream.read(4)
        if len(segment) < 4 or segment[0] != 0xFF:
            return False
        marker = segment[1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
            position += 2
            continue
        length = int.from_bytes(segment[2:4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            return _contains_end_marker(stream, position + 2 + length)
        position += 2 + length
    return False


def _contains_end_marker(stream: IO[bytes], start: int) -> bool:
    """Whether FF D9 occurs at or after `start`, also across two pieces."""
    size = stream.seek(0, io.SEEK_END)
    stream.seek(start)
    last = b""
    for piece in _pieces(stream, size - start):
        if b"\xff\xd9" in piece or (last == b"\xff" and piece[:1] == b"\xd9"):
            return True
        last = piece[-1:]
    return False


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:160]


_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _decode(picture: PILImage.Image, data: bytes, kind: str, scratch: DiskDecode | None = None) -> Image:
    notes: list[str] = []
    frames = int(getattr(picture, "n_frames", 1) or 1)
    if frames > 1:
        what = "page" if kind == "tiff" else "frame"
        notes.append(f"{kind.upper()}: first {what} of {frames} used")
    original_mode = picture.mode
    icc = picture.info.get("icc_profile") or None
    try:
        # Large: decoded into a file in the scratch folder, a strip at a time (same decoders, same
        # pixels). First: reading a PNG's EXIF makes Pillow load the whole picture in memory (an eXIf
        # chunk may follow the pixels); the TIFF path here leaves Pillow's TIFF tags alone.
        pixels = decode_to_disk(picture, data, kind, scratch) if scratch is not None else None
    except _DECODE_ERRORS as error:
        raise CorruptImageError(f"corrupt or truncated {kind.upper()} data: {_reason(error)}") from None
    exif = _read_exif(picture, kind)
    orientation = _orientation(picture, kind)  # before load(): Pillow may consume a TIFF's tag there
    try:
        if pixels is None:
            picture.load()
            pixels = _sixteen_bit_colour(picture, data, kind)
        upright = False  # tifffile / OpenCV / the disk decode return the pixels as stored
        if pixels is None:
            pixels, icc = _pixels_from_pillow(picture, icc, notes)
            upright = _pillow_applied_orientation(picture, kind, orientation)
    except _DECODE_ERRORS as error:
        raise CorruptImageError(f"corrupt or truncated {kind.upper()} data: {_reason(error)}") from None
    carried = _carried_metadata(picture, data, kind, exif, orientation)  # after load(): PNG text after IDAT
    if is_disk_backed(pixels):
        if not upright and orientation != 1 and scratch is not None:
            pixels = upright_on_disk(pixels, apply_orientation(pixels, orientation), scratch.folder)
    else:
        pixels = np.ascontiguousarray(pixels if upright else apply_orientation(pixels, orientation))
    if is_disk_backed(pixels):
        notes.append(
            f"decoded into the scratch folder ({pixels.nbytes / 1e6:,.0f} MB): more than this worker keeps "
            "in memory"
        )
    if orientation != 1:
        source = "TIFF" if kind == "tiff" else "EXIF"
        notes.append(f"{source} orientation {orientation} applied; output written upright")
    return Image(
        pixels=pixels,
        source_format=kind,
        icc_profile=icc,
        notes=notes,
        original_mode=original_mode,
        **carried,
    )


def _carried_metadata(
    picture: PILImage.Image, data: bytes, kind: str, exif: PILImage.Exif | None, orientation: int
) -> dict[str, bytes | None]:
    """EXIF, XMP, IPTC and Photoshop resources as the file holds them, made true of the upright pixels
    (Image's fields of the same names; pipeline/metadata.py edits them). Damaged metadata is not carried;
    it never costs the picture."""
    try:
        return _metadata_fields(picture, data, kind, exif, orientation)
    except Exception:  # a hostile block may break any parser: the picture is still restored, without it
        return {"exif": None, "xmp": None, "xmp_extended": None, "iptc": None, "photoshop": None}


def _metadata_fields(
    picture: PILImage.Image, data: bytes, kind: str, exif: PILImage.Exif | None, orientation: int
) -> dict[str, bytes | None]:
    xmp, extended, iptc, photoshop = picture.info.get("xmp"), None, None, None
    if kind == "jpg":
        xmp, extended, block = metadata.jpeg_metadata(getattr(picture, "applist", []))
        iptc, photoshop = metadata.split_photoshop(block)
    elif kind == "png":
        iptc, photoshop = metadata.iptc_from_raw_profile(picture.info.get("Raw profile type iptc"))
    elif kind == "tiff":
        tags = metadata.tiff_raw_tags(data, (700, 33723, 34377))
        xmp = tags.get(700)
        iptc_in_resources, photoshop = metadata.split_photoshop(tags.get(34377))
        iptc = tags.get(33723) or iptc_in_resources
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return {
        "exif": _upright_exif_block(picture, data, kind, exif),
        "xmp": metadata.upright_xmp(xmp, orientation) if xmp else None,
        "xmp_extended": metadata.upright_xmp(extended, orientation) if extended else None,
        "iptc": iptc,
        "photoshop": photoshop,
    }


def _upright_exif_block(
    picture: PILImage.Image, data: bytes, kind: str, parsed: PILImage.Exif | None
) -> bytes | None:
    """The file's own EXIF bytes with Orientation 1 (a TIFF's descriptive tags gathered into one);
    Pillow's re-serialisation only when the block is no TIFF structure we can edit in place."""
    if kind == "tiff":
        raw = metadata.exif_from_tiff_file(data)
    else:
        raw = metadata.exif_structure(picture.info.get("exif"))
    if raw is not None:
        try:
            return metadata.upright_exif(raw)
        except (ValueError, struct.error):
            pass
    fallback = _exif_bytes(parsed, strip_gps=False)
    return fallback.removeprefix(metadata.EXIF_PREFIX) if fallback else None


def _orientation(picture: PILImage.Image, kind: str) -> int:
    """The file's orientation, 1-8 (1 when absent or invalid): a TIFF's own tag in its first IFD, the
    EXIF block for the other formats. Read before the pixels are loaded."""
    try:
        if kind == "tiff":
            value = getattr(picture, "tag_v2", {}).get(_ORIENTATION, 1)
        else:
            value = picture.getexif().get(_ORIENTATION, 1)
        orientation = int(value or 1)
    except Exception:  # a damaged EXIF block must not cost the picture: upright as stored
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _header_orientation(picture: PILImage.Image, kind: str) -> int:
    """_orientation without a decode: Pillow's PNG getexif() loads the whole image to look for an eXIf
    chunk after the pixel data, so for PNG only an eXIf chunk the header held counts."""
    if kind != "png":
        return _orientation(picture, kind)
    raw = picture.info.get("exif")
    if not raw:
        return 1
    try:
        exif = PILImage.Exif()
        exif.load(raw)
        orientation = int(exif.get(_ORIENTATION, 1) or 1)
    except Exception:  # damaged EXIF: upright as stored, like _orientation
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def _pillow_applied_orientation(picture: PILImage.Image, kind: str, orientation: int) -> bool:
    """Whether Pillow already turned the loaded pixels upright. Recent Pillow does so for TIFF (only) in
    load() and then drops the tag from tag_v2; older versions leave both alone. Checking the tag keeps
    orientation applied exactly once with either."""
    if kind != "tiff" or orientation == 1:
        return False
    return _ORIENTATION not in getattr(picture, "tag_v2", {})


def _stored_size(picture: PILImage.Image, kind: str) -> tuple[int, int]:
    """Width and height as stored in the file (Pillow reports a rotated TIFF's size already swapped)."""
    tags = getattr(picture, "tag_v2", None)
    if kind == "tiff" and tags is not None and 256 in tags and 257 in tags:
        return int(tags[256]), int(tags[257])  # ImageWidth, ImageLength
    return picture.size


def _read_exif(picture: PILImage.Image, kind: str) -> PILImage.Exif | None:
    try:
        exif = picture.getexif()
    except Exception:  # a damaged EXIF block must not cost the picture; it is simply not carried
        return None
    if kind == "tiff":
        exif = _descriptive_tiff_tags(exif)
    return exif if len(exif) else None


def _descriptive_tiff_tags(tiff_tags: PILImage.Exif) -> PILImage.Exif:
    """A TIFF's IFD0 is its container (strip offsets, compression): keep only what describes the photo."""
    kept = PILImage.Exif()
    for tag in (*_DESCRIPTIVE_TAGS, _ORIENTATION):
        if tag in tiff_tags:
            kept[tag] = tiff_tags[tag]
    return kept


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Rotate/flip HxW[xC] pixels as EXIF orientation 1-8 says (same result as ImageOps.exif_transpose)."""
    transforms = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    transform = transforms.get(orientation)
    return pixels if transform is None else transform(pixels)


def _sixteen_bit_colour(picture: PILImage.Image, data: bytes, kind: str) -> np.ndarray | None:
    """16-bit RGB(A) that Pillow would silently reduce to 8 bits: decode it with OpenCV / tifffile."""
    if kind == "png" and data[24] == 16 and data[25] in (2, 4, 6):  # IHDR bit depth, colour type
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is None or decoded.dtype != np.uint16:
            raise CorruptImageError("corrupt 16-bit PNG data")
        return _from_bgr(decoded)
    if kind == "tiff" and picture.mode in ("RGB", "RGBA", "RGBX"):
        bits = picture.tag_v2.get(258) if hasattr(picture, "tag_v2") else None  # BitsPerSample
        if bits and max(bits if isinstance(bits, tuple) else (bits,)) == 16:
            return _tiff_sixteen_bit(data)
    return None


def _from_bgr(decoded: np.ndarray) -> np.ndarray:
    if decoded.ndim == 2:
        return decoded
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGBA)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def _tiff_sixteen_bit(data: bytes) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(io.BytesIO(data)) as tiff:
        array = tiff.pages[0].asarray()
    if array.dtype != np.uint16 or array.ndim != 3 or array.shape[2] not in (3, 4):
        raise CorruptImageError(f"unexpected 16-bit TIFF layout {array.shape} {array.dtype}")
    return array


def _pixels_from_pillow(
    picture: PILImage.Image, icc: bytes | None, notes: list[str]
) -> tuple[np.ndarray, bytes | None]:
    mode = picture.mode
    has_key_colour = "transparency" in picture.info
    if mode == "1":
        notes.append("1-bit image converted to 8-bit grayscale")
        return np.asarray(picture.convert("L")), icc
    if mode in ("P", "PA"):
        target = "RGBA" if mode == "PA" or has_key_colour else "RGB"
        notes.append(f"palette image converted to {target}")
        return np.asarray(picture.convert(target)), icc
    if mode in ("L", "RGB") and has_key_colour:
        notes.append("transparent key colour converted to an alpha channel")
        return _replicate_gray(np.asarray(picture.convert("RGBA" if mode == "RGB" else "LA"))), icc
    if mode == "L":
        return _pixel_array(picture), icc
    if mode in ("LA", "La"):
        return _replicate_gray(np.asarray(picture.convert("LA"))), icc
    if mode in ("RGB", "RGBA"):
        return _pixel_array(picture), icc
    if mode in ("RGBX", "RGBa", "YCbCr", "LAB", "HSV"):
        target = "RGBA" if mode == "RGBa" else "RGB"
        return np.asarray(picture.convert(target)), icc
    if mode == "CMYK":
        return _cmyk_to_rgb(picture, icc, notes), None
    if mode.startswith("I;16"):
        return np.asarray(picture).astype(np.uint16), icc
    if mode in ("I", "F"):
        return _wide_gray_to_16(np.asarray(picture), notes), icc
    raise UnsupportedFormatError(f"pixel mode {mode} is not supported")


_BAND_COPY_PIXELS = 16_000_000  # from here on, a decoded picture is copied out a band at a time
_BAND_BYTES = 8 * 1024 * 1024


def _pixel_array(picture: PILImage.Image) -> np.ndarray:
    """np.asarray(picture), without its second whole copy for large pictures: numpy takes Pillow's pixels
    through tobytes(), one bytes object of the whole image on top of Pillow's own storage (4 bytes a
    pixel for RGB). A 100 MP scan decoded to 960 MB that way; copied out a band at a time, ~700 MB."""
    width, height = picture.size
    if width * height < _BAND_COPY_PIXELS:
        return np.asarray(picture)
    first = np.asarray(picture.crop((0, 0, width, 1)))
    pixels = np.empty((height, *first.shape[1:]), first.dtype)
    rows = max(1, _BAND_BYTES // first.nbytes)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        pixels[top:bottom] = np.asarray(picture.crop((0, top, width, bottom)))
    return pixels


def _replicate_gray(gray_alpha: np.ndarray) -> np.ndarray:
    """H x W x 2 (or 4) -> H x W x 4 RGBA with the gray copied to R, G and B."""
    if gray_alpha.shape[2] == 4:
        return gray_alpha
    gray, alpha = gray_alpha[:, :, 0], gray_alpha[:, :, 1]
    return np.dstack([gray, gray, gray, alpha])


def _cmyk_to_rgb(picture: PILImage.Image, icc: bytes | None, notes: list[str]) -> np.ndarray:
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                picture, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            if converted is not None:
                notes.append("CMYK converted to sRGB through its ICC profile")
                return np.asarray(converted)
        except (ImageCms.PyCMSError, OSError):
            pass
    notes.append("CMYK converted to RGB (no usable ICC profile; colours approximate)")
    return np.asarray(picture.convert("RGB"))


def _wide_gray_to_16(values: np.ndarray, notes: list[str]) -> np.ndarray:
    if values.dtype.kind == "f":
        peak = float(np.nanmax(values)) if values.size else 0.0
        scaled = values * 65535.0 if peak <= 1.0 else values
        notes.append("floating-point grayscale converted to 16-bit")
        return np.clip(np.nan_to_num(scaled) + 0.5, 0, 65535).astype(np.uint16)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        notes.append("32-bit grayscale clipped to 16-bit")
    return np.clip(values, 0, 65535).astype(np.uint16)


# ---------------------------------------------------------------------------------------------- writing


def output_format_for(image: Image, requested: str) -> str:
    """The format to write: `requested` unless "same", which maps the input format to a writable one."""
    if requested != "same":
        if requested not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {requested!r}; use same, {', '.join(OUTPUT_FORMATS)}")
        return requested
    source = image.source_format
    if source == "heic":
        return "png" if image.channels == 4 else "jpg"
    if source in ("gif", "bmp"):
        return "png"
    if source in OUTPUT_FORMATS:
        return source
    return "png"


def format_notes(image: Image, fmt: str) -> list[str]:
    """What writing `image` as `fmt` changes, in words (for the report)."""
    notes = []
    if fmt in ("jpg", "webp") and image.bit_depth == 16:
        notes.append(f"{fmt.upper()} holds 8 bits per channel: 16-bit output reduced to 8-bit")
    if fmt == "jpg" and image.channels == 4:
        notes.append("JPEG has no alpha: transparent areas flattened onto white")
    if image.source_format == "heic" and fmt != "heic":
        notes.append(f"HEIC input written as {fmt.upper()} (no portable HEIC writer; opens everywhere)")
    if image.source_format in ("gif", "bmp") and fmt == "png":
        notes.append(f"{image.source_format.upper()} input written as PNG (lossless, keeps every colour)")
    notes += metadata.lost_notes(fmt, image.width, image.height, image.exif, image.iptc, image.photoshop)
    return notes


def encode_image(image: Image, fmt: str, quality: int = 95, strip_gps: bool = False) -> bytes:
    """PNG / JPEG / WebP / TIFF bytes of `image` with its metadata (ICC, EXIF, XMP, IPTC: see
    pipeline/metadata.py) in the format's own places, updated to the output's size."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"cannot write format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")
    carried = output_metadata(image, strip_gps)
    pixels = _as_output_pixels(image, fmt)
    gray_alpha = pixels.ndim == 3 and pixels.shape[2] == 4 and image.original_mode in ("LA", "La")
    if fmt in ("jpg", "png") and not gray_alpha:
        # OpenCV encodes straight from the array; Pillow would first copy RGB into 4-byte pixels (768 MB
        # more for a 16000x12000 output).
        return _encode_opencv(pixels, fmt, quality, carried)
    if pixels.dtype == np.uint16 and pixels.ndim == 3:
        return _tiff16_colour(pixels, carried)
    picture = _to_pillow(pixels, image.original_mode)
    buffer = io.BytesIO()
    if fmt == "jpg":
        picture.save(buffer, "JPEG", quality=quality, subsampling=0 if quality >= 90 else 2)
        return metadata.jpeg_with_metadata(buffer.getbuffer(), carried)
    if fmt == "png":
        picture.save(buffer, "PNG", compress_level=6)
        return metadata.png_with_metadata(buffer.getbuffer(), carried)
    if fmt == "webp":
        picture.save(buffer, "WEBP", quality=quality, method=4, **metadata.webp_options(carried))
        return buffer.getvalue()
    picture.save(buffer, "TIFF", compression="tiff_adobe_deflate")
    metadata.add_tiff_metadata(buffer, carried)
    return buffer.getvalue()


def output_metadata(image: Image, strip_gps: bool) -> metadata.OutputMetadata:
    """The metadata an output of `image` carries: the input's, with the output's pixel dimensions and
    Software, GPS removed when asked (what encoders hand to pipeline.metadata's writers)."""
    return metadata.for_output(
        width=image.width,
        height=image.height,
        icc_profile=image.icc_profile,
        exif=image.exif,
        xmp=image.xmp,
        xmp_extended=image.xmp_extended,
        iptc=image.iptc,
        photoshop=image.photoshop,
        strip_gps=strip_gps,
    )


def _as_output_pixels(image: Image, fmt: str) -> np.ndarray:
    pixels = image.pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if fmt in ("jpg", "webp") and pixels.dtype == np.uint16:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if fmt == "jpg" and pixels.ndim == 3 and pixels.shape[2] == 4:
        pixels = _flatten_on_white(pixels)
    return pixels


def _flatten_on_white(rgba: np.ndarray) -> np.ndarray:
    peak = float(np.iinfo(rgba.dtype).max)
    alpha = rgba[:, :, 3:4].astype(np.float32) / peak
    flat = rgba[:, :, :3].astype(np.float32) * alpha + peak * (1.0 - alpha)
    return np.clip(flat + 0.5, 0, peak).astype(rgba.dtype)


def _to_pillow(pixels: np.ndarray, original_mode: str) -> PILImage.Image:
    if pixels.ndim == 2:
        if pixels.dtype == np.uint16:
            return _gray16(pixels)
        return PILImage.fromarray(pixels, mode="L")
    if pixels.shape[2] == 4 and original_mode in ("LA", "La"):
        gray = pixels[:, :, :3].mean(axis=2).round().astype(np.uint8)
        return PILImage.fromarray(np.dstack([gray, pixels[:, :, 3]]), mode="LA")
    return PILImage.fromarray(pixels, mode="RGBA" if pixels.shape[2] == 4 else "RGB")


def _gray16(pixels: np.ndarray) -> PILImage.Image:
    return PILImage.frombytes("I;16", (pixels.shape[1], pixels.shape[0]), pixels.astype("<u2").tobytes())


def _exif_bytes(exif: PILImage.Exif | None, strip_gps: bool) -> bytes | None:
    """Serialise with orientation 1 (pixels are upright) and, when asked, without the GPS IFD."""
    if exif is None or not len(exif):
        return None
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    if strip_gps and _GPS_IFD in exif:
        del exif[_GPS_IFD]
    try:
        return exif.tobytes()
    except Exception:  # a tag Pillow cannot re-serialise: keep the picture, drop the block
        return None


def _encode_opencv(pixels: np.ndarray, fmt: str, quality: int, carried: metadata.OutputMetadata) -> bytes:
    """JPEG or PNG (8/16-bit, gray/RGB/RGBA) via OpenCV, then the metadata spliced in."""
    if fmt == "jpg":
        sampling = (
            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444 if quality >= 90 else cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420
        )
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 6]
    with _bgr_order(pixels) as bgr:
        ok, encoded = cv2.imencode(".jpg" if fmt == "jpg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode the {fmt.upper()} output")
    # A view of OpenCV's buffer, spliced into the one bytes object returned: a 48 MP PNG is ~80 MB, and
    # each copy of it (tobytes, slices, concatenations) was held at the process's memory peak.
    data = encoded.reshape(-1).data
    if fmt == "jpg":
        return metadata.jpeg_with_metadata(data, carried)
    return metadata.png_with_metadata(data, carried)


@contextmanager
def _bgr_order(pixels: np.ndarray) -> Iterator[np.ndarray]:
    """OpenCV wants BGR(A): swap R and B in place, a slice at a time, and swap back afterwards, so a
    huge output is never copied; read-only arrays get a copy instead."""
    if pixels.ndim == 2:
        yield pixels
        return
    if not pixels.flags.writeable:
        yield np.ascontiguousarray(pixels[:, :, [2, 1, 0, 3][: pixels.shape[2]]])
        return
    _swap_red_blue(pixels)
    try:
        yield pixels
    finally:
        _swap_red_blue(pixels)


def _swap_red_blue(pixels: np.ndarray) -> None:
    for first in range(0, pixels.shape[0], 256):
        rows = pixels[first : first + 256]
        rows[:, :, [0, 2]] = rows[:, :, [2, 0]]


def _tiff16_colour(pixels: np.ndarray, carried: metadata.OutputMetadata) -> bytes:
    """16-bit RGB(A) TIFF via tifffile, then the metadata's tags appended (pipeline.metadata)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer,
        pixels,
        photometric="rgb",
        extrasamples=("unassalpha",) if pixels.shape[2] == 4 else None,
        compression="zlib",
        software=False,  # the Software tag is the metadata's (this program), not the library's
        metadata=None,
    )
    metadata.add_tiff_metadata(buffer, carried)
    return buffer.getvalue()
