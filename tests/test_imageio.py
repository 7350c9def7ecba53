"""Image I/O keeps everything: every format, bit depth, alpha, EXIF orientation, ICC and EXIF case, and
every class of bad input becomes a typed error with a one-line message. All files are generated here."""

from __future__ import annotations

import functools
import io
import struct
import zlib

import cv2
import numpy as np
import pillow_heif
import pytest
import tifffile
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from pipeline.imageio import (
    FORMAT_EXTENSIONS,
    apply_orientation,
    encode_image,
    format_notes,
    load_image,
    output_format_for,
)
from pipeline.types import (
    AbsurdDimensionsError,
    BadImageError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    Image,
    NotAnImageError,
    UnsupportedFormatError,
)

pillow_heif.register_heif_opener()  # only to WRITE test HEIC files; load_image registers it itself


def photo(height: int = 24, width: int = 32) -> np.ndarray:
    """An asymmetric RGB test picture (gradients + a corner mark) so flips and rotations show."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.dstack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) % 64 * 4]).astype(np.uint8)
    rgb[:4, :6] = (255, 0, 0)
    return rgb


def pil_bytes(picture: PILImage.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache  # one profile: lcms stamps the creation time, so two calls can differ by a second
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_with(**tags: object) -> PILImage.Exif:
    exif = PILImage.Exif()
    for key, value in tags.items():
        exif[int(key.removeprefix("t"), 16)] = value
    return exif


# -- formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pil_format", "expected"),
    [("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tiff"), ("BMP", "bmp"), ("HEIF", "heic")],
)
def test_reads_every_supported_format(pil_format: str, expected: str, tmp_path) -> None:
    path = tmp_path / f"photo{FORMAT_EXTENSIONS[expected]}"
    path.write_bytes(pil_bytes(PILImage.fromarray(photo()), pil_format))
    image = load_image(path)
    assert image.source_format == expected
    assert image.pixels.shape == (24, 32, 3) and image.pixels.dtype == np.uint8
    error = np.abs(image.pixels.astype(int) - photo())
    if expected in ("png", "tiff", "bmp"):
        assert error.max() == 0
    else:
        assert error.mean() < 8  # lossy formats: the same picture, not the same bits


def test_gif_first_frame_is_used_and_the_note_says_so() -> None:
    frames = [PILImage.fromarray(np.full((8, 8, 3), value, np.uint8)) for value in (10, 200, 90)]
    data = pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = load_image(data)
    assert image.source_format == "gif"
    assert image.pixels.shape == (8, 8, 3) and abs(int(image.pixels[0, 0, 0]) - 10) <= 2
    assert "GIF: first frame of 3 used" in image.notes
    assert output_format_for(image, "same") == "png"


def test_png_16bit_rgb_stays_16bit_end_to_end() -> None:
    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, (10, 12, 3), dtype=np.uint16)
    _, encoded = cv2.imencode(".png", cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    image = load_image(encoded.tobytes())
    assert image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, rgb16)  # RGB order, not OpenCV's BGR
    again = load_image(encode_image(image, "png"))
    np.testing.assert_array_equal(again.pixels, rgb16)


def test_png_16bit_rgba_keeps_alpha_and_depth() -> None:
    rng = np.random.default_rng(2)
    rgba16 = rng.integers(0, 65536, (9, 7, 4), dtype=np.uint16)
    _, encoded = cv2.imencode(".png", cv2.cvtColor(rgba16, cv2.COLOR_RGBA2BGRA))
    image = load_image(encoded.tobytes())
    np.testing.assert_array_equal(image.pixels, rgba16)
    np.testing.assert_array_equal(load_image(encode_image(image, "png")).pixels, rgba16)
    np.testing.assert_array_equal(load_image(encode_image(image, "tiff")).pixels, rgba16)


def test_tiff_16bit_rgb_stays_16bit_with_icc() -> None:
    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (8, 10, 3), dtype=np.uint16)
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, rgb16, photometric="rgb", extratags=[(34675, "B", len(srgb_icc()), srgb_icc(), True)]
    )
    image = load_image(buffer.getvalue())
    assert image.source_format == "tiff" and image.icc_profile == srgb_icc()
    np.testing.assert_array_equal(image.pixels, rgb16)
    written = encode_image(image, "tiff")
    np.testing.assert_array_equal(load_image(written).pixels, rgb16)
    assert load_image(written).icc_profile == srgb_icc()


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_gray_16bit_stays_gray_16bit(fmt: str) -> None:
    gray16 = (np.arange(60, dtype=np.uint16).reshape(6, 10) * 1000 + 7).astype(np.uint16)
    image = load_image(encode_image(Image(gray16, source_format=fmt), fmt))
    assert image.pixels.ndim == 2 and image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, gray16)


def test_gray_8bit_stays_gray() -> None:
    gray = photo()[:, :, 0]
    image = load_image(pil_bytes(PILImage.fromarray(gray, "L"), "PNG"))
    assert image.pixels.ndim == 2 and image.original_mode == "L"
    assert PILImage.open(io.BytesIO(encode_image(image, "jpg"))).mode == "L"
    np.testing.assert_array_equal(load_image(encode_image(image, "png")).pixels, gray)


@pytest.mark.parametrize("pil_format", ["PNG", "WEBP", "TIFF"])
def test_rgba_alpha_is_kept(pil_format: str) -> None:
    rgba = np.dstack([photo(), np.tile(np.arange(32, dtype=np.uint8) * 8, (24, 1))])
    image = load_image(pil_bytes(PILImage.fromarray(rgba, "RGBA"), pil_format, lossless=True))
    assert image.pixels.shape == (24, 32, 4)
    np.testing.assert_array_equal(image.pixels[:, :, 3], rgba[:, :, 3])
    for fmt in ("png", "webp", "tiff"):
        written = encode_image(image, fmt, quality=100)
        assert load_image(written).pixels.shape[2] == 4


def test_gray_with_alpha_comes_back_as_gray_with_alpha() -> None:
    la = np.dstack([photo()[:, :, 0], np.full((24, 32), 128, np.uint8)])
    image = load_image(pil_bytes(PILImage.fromarray(la, "LA"), "PNG"))
    assert image.original_mode == "LA" and image.pixels.shape == (24, 32, 4)
    written = PILImage.open(io.BytesIO(encode_image(image, "png")))
    assert written.mode == "LA"
    np.testing.assert_array_equal(np.asarray(written), la)


def test_palette_with_transparency_becomes_rgba_and_says_so() -> None:
    picture = PILImage.fromarray(photo()).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    picture.info["transparency"] = 0
    image = load_image(pil_bytes(picture, "PNG", transparency=0))
    assert image.pixels.shape[2] == 4 and "palette image converted to RGBA" in image.notes


def test_palette_without_transparency_becomes_rgb() -> None:
    picture = PILImage.fromarray(photo()).convert("P", palette=PILImage.Palette.ADAPTIVE, colors=16)
    image = load_image(pil_bytes(picture, "PNG"))
    assert image.pixels.shape == (24, 32, 3) and "palette image converted to RGB" in image.notes


def test_one_bit_image_becomes_8bit_gray() -> None:
    bits = PILImage.fromarray(photo()[:, :, 0] > 128)
    image = load_image(pil_bytes(bits, "PNG"))
    assert image.pixels.ndim == 2 and set(np.unique(image.pixels)) <= {0, 255}
    assert "1-bit image converted to 8-bit grayscale" in image.notes


def test_cmyk_jpeg_becomes_rgb_and_drops_its_cmyk_profile() -> None:
    cmyk = PILImage.fromarray(photo()).convert("CMYK")
    image = load_image(pil_bytes(cmyk, "JPEG", quality=100))
    assert image.pixels.shape == (24, 32, 3) and image.icc_profile is None
    assert any(note.startswith("CMYK converted") for note in image.notes)
    assert np.abs(image.pixels.astype(int) - photo()).mean() < 12


# -- orientation, ICC, EXIF ----------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("pil_format", ["PNG", "JPEG"])
def test_exif_orientation_is_applied_and_reset(orientation: int, pil_format: str) -> None:
    picture = PILImage.fromarray(photo())
    exif = exif_with(t0112=orientation, t010f="TestCam")
    data = pil_bytes(picture, pil_format, exif=exif.tobytes(), quality=100)
    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(io.BytesIO(data))).convert("RGB"))
    image = load_image(data)
    assert image.pixels.shape == expected.shape
    np.testing.assert_array_equal(image.pixels, expected)
    for fmt in ("jpg", "png", "webp", "tiff"):
        written = PILImage.open(io.BytesIO(encode_image(image, fmt)))
        assert written.getexif().get(0x0112, 1) == 1
        assert written.getexif().get(0x010F) == "TestCam"
        assert written.size == (image.width, image.height)


def test_apply_orientation_matches_pillow_for_all_eight() -> None:
    pixels = photo(5, 7)
    for orientation in range(1, 9):
        picture = PILImage.fromarray(pixels)
        picture.getexif()[0x0112] = orientation
        expected = np.asarray(ImageOps.exif_transpose(picture))
        np.testing.assert_array_equal(apply_orientation(pixels, orientation), expected)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "tiff"])
def test_icc_profile_is_carried_to_every_output_format(fmt: str) -> None:
    image = load_image(pil_bytes(PILImage.fromarray(photo()), "PNG", icc_profile=srgb_icc()))
    assert image.icc_profile == srgb_icc()
    written = PILImage.open(io.BytesIO(encode_image(image, fmt)))
    assert written.info.get("icc_profile") == srgb_icc()


def test_icc_profile_is_carried_through_16bit_png() -> None:
    image = Image(np.full((4, 4, 3), 40000, np.uint16), source_format="png", icc_profile=srgb_icc())
    assert load_image(encode_image(image, "png")).icc_profile == srgb_icc()


def test_exif_is_carried_and_strip_gps_removes_only_gps() -> None:
    exif = exif_with(t010f="TestCam", t0110="Model 1")
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPSLatitude
    exif.get_ifd(0x8825)[1] = "N"
    data = pil_bytes(PILImage.fromarray(photo()), "JPEG", exif=exif.tobytes())
    image = load_image(data)
    kept = PILImage.open(io.BytesIO(encode_image(image, "jpg"))).getexif()
    assert kept.get(0x010F) == "TestCam" and kept.get_ifd(0x8825)
    stripped = PILImage.open(io.BytesIO(encode_image(image, "jpg", strip_gps=True))).getexif()
    assert stripped.get(0x010F) == "TestCam" and not stripped.get_ifd(0x8825)


# -- output format -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "channels", "expected"),
    [
        ("jpg", 3, "jpg"),
        ("png", 3, "png"),
        ("webp", 4, "webp"),
        ("tiff", 3, "tiff"),
        ("heic", 3, "jpg"),
        ("heic", 4, "png"),
        ("gif", 3, "png"),
        ("bmp", 3, "png"),
    ],
)
def test_same_format_maps_to_a_writable_one(source: str, channels: int, expected: str) -> None:
    image = Image(np.zeros((2, 2, channels), np.uint8), source_format=source)
    assert output_format_for(image, "same") == expected
    assert output_format_for(image, "webp") == "webp"


def test_unknown_output_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown output format"):
        output_format_for(Image(np.zeros((2, 2, 3), np.uint8)), "bmp")


def test_16bit_to_jpeg_is_reduced_and_the_note_says_so() -> None:
    image = Image(np.full((4, 4, 3), 65535, np.uint16), source_format="png")
    assert any("reduced to 8-bit" in note for note in format_notes(image, "jpg"))
    written = load_image(encode_image(image, "jpg"))
    assert written.pixels.dtype == np.uint8 and written.pixels.min() >= 250


def test_alpha_to_jpeg_is_flattened_onto_white() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    image = Image(rgba, source_format="png")
    assert any("flattened onto white" in note for note in format_notes(image, "jpg"))
    assert load_image(encode_image(image, "jpg")).pixels.min() >= 250


def test_jpeg_quality_setting_changes_the_file() -> None:
    image = Image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), source_format="jpg")
    assert len(encode_image(image, "jpg", quality=30)) < len(encode_image(image, "jpg", quality=95))
    assert len(encode_image(image, "webp", quality=30)) < len(encode_image(image, "webp", quality=95))


# -- bad input -----------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny IDAT and IEND (no real pixel data)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def test_zero_byte_file_is_an_empty_file_error(tmp_path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(EmptyFileError, match="empty file"):
        load_image(path)


@pytest.mark.parametrize("data", [b"hello, this is text\n", bytes(range(256)) * 4, b"\x00" * 100])
def test_not_an_image_is_refused(data: bytes) -> None:
    with pytest.raises(NotAnImageError, match="not an image"):
        load_image(data)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"8BPS\x00\x01" + b"\0" * 40, "Photoshop"),
        (b"%PDF-1.7\n" + b"\0" * 40, "PDF"),
        (b"qoif" + b"\0" * 40, "QOI"),
    ],
)
def test_unsupported_format_is_named(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedFormatError, match=name):
        load_image(data)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("pil_format", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "HEIF"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95])
def test_truncated_file_is_a_corrupt_image_error(pil_format: str, keep: float) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # incompressible: truncation cuts pixels
    data = pil_bytes(PILImage.fromarray(noisy), pil_format)
    with pytest.raises(CorruptImageError):
        load_image(data[: int(len(data) * keep)])


def test_jpeg_cut_just_before_its_end_marker_is_refused() -> None:
    data = pil_bytes(PILImage.fromarray(photo()), "JPEG")
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(CorruptImageError, match="truncated JPEG"):
        load_image(data[:-2])


def test_jpeg_with_exif_thumbnail_is_not_mistaken_for_complete_when_cut() -> None:
    thumb = pil_bytes(PILImage.fromarray(photo(8, 8)), "JPEG")  # has its own SOS and EOI inside APP1
    exif = exif_with(t010f="cam")
    exif_bytes = exif.tobytes() + thumb
    data = pil_bytes(
        PILImage.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)),
        "JPEG",
        exif=exif_bytes,
    )
    load_image(data)  # the complete file loads
    with pytest.raises(CorruptImageError):
        load_image(data[: len(data) - 200])


def test_corrupt_png_data_is_refused() -> None:
    data = bytearray(pil_bytes(PILImage.fromarray(photo()), "PNG"))
    start = data.find(b"IDAT") + 8
    data[start : start + 40] = bytes(40)  # garbage inside the compressed stream
    with pytest.raises(CorruptImageError):
        load_image(bytes(data))


def test_corrupt_header_is_refused() -> None:
    data = bytearray(pil_bytes(PILImage.fromarray(photo()), "PNG"))
    data[12:16] = b"XXXX"  # IHDR chunk name destroyed
    with pytest.raises(BadImageError):
        load_image(bytes(data))


@pytest.mark.timeout(10)
def test_decompression_bomb_is_refused_from_the_header_before_decoding() -> None:
    bomb = png_header_only(60_000, 60_000)  # 3.6 gigapixels claimed by a 100-byte file
    with pytest.raises(DecompressionBombError, match="megapixels"):
        load_image(bomb)


def test_pixel_limit_is_configurable() -> None:
    data = pil_bytes(PILImage.fromarray(photo(100, 100)), "PNG")
    assert load_image(data, max_pixels=10_000).width == 100
    with pytest.raises(DecompressionBombError, match="above the limit"):
        load_image(data, max_pixels=9_999)


@pytest.mark.parametrize(("width", "height"), [(1, 5000), (200_000, 2), (150_000, 150_000)])
def test_absurd_dimensions_are_refused(width: int, height: int) -> None:
    with pytest.raises(AbsurdDimensionsError, match="absurd dimensions"):
        load_image(png_header_only(width, height))


def test_zero_width_header_is_a_bad_image() -> None:
    with pytest.raises(BadImageError):
        load_image(png_header_only(0, 10))


def test_every_bad_input_message_is_one_line() -> None:
    samples = [b"", b"text", b"8BPS....", png_header_only(60_000, 60_000), png_header_only(1, 5000)]
    for data in samples:
        with pytest.raises(BadImageError) as caught:
            load_image(data)
        assert "\n" not in str(caught.value) and str(caught.value)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("channels", [3, 4])
def test_encoding_leaves_the_pixels_untouched_and_keeps_rgb_order(fmt: str, channels: int) -> None:
    pixels = np.zeros((16, 16, channels), np.uint8)
    pixels[..., 0] = 250  # pure red: a swapped channel order would come back blue
    if channels == 4:
        pixels[..., 3] = 255
    before = pixels.copy()
    written = load_image(encode_image(Image(pixels, source_format=fmt), fmt))
    np.testing.assert_array_equal(pixels, before)
    assert written.pixels[8, 8, 0] > 240 and written.pixels[8, 8, 2] < 10


# -- orientation in every format that carries it, checked on pixels --------------------------------------

BLOCK = 16  # JPEG's 8x8/16x16 blocks stay flat, so lossy formats keep each block's colour
BLOCK_COLOURS = {
    "A": (230, 20, 20),
    "B": (20, 200, 20),
    "C": (20, 20, 230),
    "D": (230, 230, 20),
    "E": (20, 220, 220),
    "F": (220, 20, 220),
}
# The stored picture is 3 blocks wide and 2 high:  A B C / D E F. Where its blocks end up once the
# orientation is applied, written out by hand from the TIFF/EXIF definition (row 0 / column 0 sides).
UPRIGHT_BLOCKS = {
    1: ["ABC", "DEF"],  # top-left
    2: ["CBA", "FED"],  # top-right: mirrored left-right
    3: ["FED", "CBA"],  # bottom-right: rotated 180
    4: ["DEF", "ABC"],  # bottom-left: mirrored top-bottom
    5: ["AD", "BE", "CF"],  # left-top: transposed
    6: ["DA", "EB", "FC"],  # right-top: rotated 90 clockwise to view
    7: ["FC", "EB", "DA"],  # right-bottom: transverse
    8: ["CF", "BE", "AD"],  # left-bottom: rotated 90 counter-clockwise to view
}


def blocks(rows: list[str], depth: type = np.uint8) -> np.ndarray:
    """An image made of flat BLOCK x BLOCK squares in the given colour layout."""
    scale = 257 if depth == np.uint16 else 1
    picture = np.zeros((len(rows) * BLOCK, len(rows[0]) * BLOCK, 3), depth)
    for r, row in enumerate(rows):
        for c, name in enumerate(row):
            colour = np.array(BLOCK_COLOURS[name], np.uint32) * scale
            picture[r * BLOCK : (r + 1) * BLOCK, c * BLOCK : (c + 1) * BLOCK] = colour
    return picture


def oriented_file(kind: str, orientation: int) -> bytes:
    """The stored picture A B C / D E F in `kind`, with the orientation in the tag that format uses."""
    stored = blocks(UPRIGHT_BLOCKS[1])
    exif = exif_with(t0112=orientation)
    if kind == "jpeg":
        return pil_bytes(PILImage.fromarray(stored), "JPEG", exif=exif.tobytes(), quality=95)
    if kind == "png":
        return pil_bytes(PILImage.fromarray(stored), "PNG", exif=exif.tobytes())
    if kind == "webp":
        return pil_bytes(PILImage.fromarray(stored), "WEBP", exif=exif.tobytes(), lossless=True)
    if kind in ("tiff", "tiff-deflate"):  # the tag in the TIFF's own IFD0, not an EXIF block
        compression = "tiff_adobe_deflate" if kind == "tiff-deflate" else None
        return pil_bytes(PILImage.fromarray(stored), "TIFF", exif=exif, compression=compression)
    buffer = io.BytesIO()  # 16-bit RGB TIFF, which Pillow cannot decode without losing 8 bits
    tifffile.imwrite(
        buffer,
        blocks(UPRIGHT_BLOCKS[1], np.uint16),
        photometric="rgb",
        extratags=[(0x0112, "H", 1, orientation, True)],
    )
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["jpeg", "png", "webp", "tiff", "tiff-deflate", "tiff-16bit"])
def test_every_orientation_is_applied_to_the_pixels(kind: str, orientation: int) -> None:
    data = oriented_file(kind, orientation)
    stored = PILImage.open(io.BytesIO(data))
    tag = stored.tag_v2.get(0x0112) if kind.startswith("tiff") else stored.getexif().get(0x0112)
    assert tag == orientation  # the file really carries it
    image = load_image(data)
    depth = np.uint16 if kind == "tiff-16bit" else np.uint8
    expected = blocks(UPRIGHT_BLOCKS[orientation], depth)
    assert image.pixels.shape == expected.shape and image.pixels.dtype == depth
    if kind == "jpeg":  # lossy: compare the middle of each block (edges ring), within a few levels
        inner = slice(4, BLOCK - 4)
        for by in range(0, expected.shape[0], BLOCK):
            for bx in range(0, expected.shape[1], BLOCK):
                got = image.pixels[by : by + BLOCK, bx : bx + BLOCK][inner, inner].reshape(-1, 3).mean(axis=0)
                np.testing.assert_allclose(got, expected[by, bx], atol=8)
    else:
        np.testing.assert_array_equal(image.pixels, expected)
    assert (orientation != 1) == any("orientation" in note for note in image.notes)
    written = PILImage.open(io.BytesIO(encode_image(image, "tiff" if kind.startswith("tiff") else "png")))
    assert written.getexif().get(0x0112, 1) == 1 and written.size == (image.width, image.height)
