"""Large outputs assembled on disk and encoded in strips (pipeline/scratch.py, pipeline/streaming.py).

The disk path must give the same picture as the in-memory path: the same pixels before encoding, and
files that decode to the same pixels with the same metadata. These tests force it on small images (a
budget of 0 bytes) so they stay fast; tests/test_bigscan_cgroup.py restores a really large photo inside
a memory-limited cgroup.
"""

from __future__ import annotations

import io
import itertools
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

import pipeline.scratch as scratch
from pipeline.imageio import encode_image, load_image
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer, restore_bytes
from pipeline.scratch import choose_assembly, disk_array, is_disk_backed, release_rows, row_strips
from pipeline.streaming import encode_to_file
from pipeline.types import EngineConfig, Image, RestoreError
from tests.fake_upscalers import ConvStackUpscaler

NO_FACES = RestoreOptions(faces=False)


def srgb_icc() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """Smooth pixels with some noise: compresses like a photo, every filter and codec path exercised."""
    rng = np.random.default_rng(seed)
    height, width = shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    peak = np.iinfo(dtype).max
    base = (np.sin(xs / 7.0) + np.cos(ys / 5.0) + 2) / 4 * peak
    channels = shape[2] if len(shape) == 3 else 1
    planes = [
        np.clip(base * (0.6 + 0.2 * c) + rng.normal(0, peak / 40, (height, width)), 0, peak)
        for c in range(channels)
    ]
    pixels = np.stack(planes, axis=2).astype(dtype)
    return pixels if len(shape) == 3 else pixels[:, :, 0]


def loader(model_id: str, engine: EngineConfig, denoise: float | None) -> ConvStackUpscaler:
    return ConvStackUpscaler(tile=48)


@pytest.fixture
def force_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every output goes to disk, as a 560 MP scan's would; small strips, so strip seams are many."""
    monkeypatch.setattr(scratch, "IN_MEMORY_MAX_BYTES", 0)
    monkeypatch.setattr(scratch, "STRIP_BYTES", 20_000)


# -- the choice ----------------------------------------------------------------------------------------


def test_small_outputs_stay_in_memory_and_large_ones_go_to_disk() -> None:
    gib = 1 << 30
    assert choose_assembly(100 << 20, 8 * gib) == "memory"  # a 2 MP photo at 4x: today's path
    assert choose_assembly(1_700 << 20, 64 * gib) == "disk"  # a 35 MP scan at 4x, even on a big machine
    assert choose_assembly(100 << 20, 300 << 20) == "disk"  # a container with 300 MB left


def test_restorer_chooses_from_the_memory_it_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.backends.base as base

    restorer = Restorer(EngineConfig(scratch_dir=str(tmp_path)), upscaler_loader=loader)
    pixels = photo((40, 50, 3))
    output, report = restorer.restore(Image(pixels), NO_FACES)
    assert not is_disk_backed(output.pixels)
    monkeypatch.setattr(base, "available_ram_bytes", lambda: 100_000)  # a cgroup nearly full
    output, report = restorer.restore(Image(pixels), NO_FACES)
    assert is_disk_backed(output.pixels)
    assert any("assembled on disk" in note for note in report.notes)
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing to clean up after a crash


# -- the disk-backed array -----------------------------------------------------------------------------


def test_released_rows_keep_their_data_and_leave_resident_memory(tmp_path: Path) -> None:
    array = disk_array((2048, 4096, 3), np.uint8, tmp_path)
    array[:] = 7
    resident_before = _resident_pages(array)
    release_rows(array[:, :, :3], 0, 2048)
    assert _resident_pages(array) < resident_before // 8
    assert array[0, 0, 0] == 7 and array[-1, -1, -1] == 7 and int(array[1000].sum()) == 7 * 4096 * 3


def _resident_pages(array: np.ndarray) -> int:
    """Pages of the array's mapping resident in this process (its Rss line in /proc/self/smaps)."""
    address = array.__array_interface__["data"][0]
    for block in _smaps_blocks():
        start, end = (int(part, 16) for part in block[0].split()[0].split("-"))
        if start <= address < end:
            rss = next(line for line in block if line.startswith("Rss:"))
            return int(rss.split()[1]) // (mmap.PAGESIZE // 1024)
    raise AssertionError("mapping not found")


def _smaps_blocks() -> list[list[str]]:
    blocks: list[list[str]] = []
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split()[0] and not line.split()[0].endswith(":"):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
    return blocks


def test_strips_cover_every_row_once_in_multiples() -> None:
    strips = list(row_strips(1000, 300, multiple=16, max_rows=100))
    assert strips[0] == (0, 96) and strips[-1][1] == 1000
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(strips))
    assert all((last - first) % 16 == 0 for first, last in strips[:-1])


# -- the restorer: disk path == memory path ------------------------------------------------------------

CASES = {
    "rgb": (photo((37, 53, 3)), ""),
    "rgba": (np.dstack([photo((37, 53, 3)), photo((37, 53), seed=3)]), ""),
    "constant alpha": (np.dstack([photo((37, 53, 3)), np.full((37, 53), 200, np.uint8)]), ""),
    "gray": (photo((37, 53)), "L"),
    "gray+alpha": (np.dstack([photo((37, 53))] * 3 + [photo((37, 53), seed=4)]), "LA"),
    "16-bit rgb": (photo((37, 53, 3), np.uint16), "RGB"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("scale", [4.0, 2.0, 3.0])
def test_disk_assembly_gives_the_memory_pixels(
    case: str, scale: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pixels, mode = CASES[case]
    options = NO_FACES.replace(scale=scale)
    engine = EngineConfig(scratch_dir=str(tmp_path))
    in_memory, _ = Restorer(engine, upscaler_loader=loader).restore(
        Image(pixels, original_mode=mode), options
    )
    monkeypatch.setattr(scratch, "IN_MEMORY_MAX_BYTES", 0)
    monkeypatch.setattr(scratch, "STRIP_BYTES", 20_000)
    on_disk, _ = Restorer(engine, upscaler_loader=loader).restore(Image(pixels, original_mode=mode), options)
    assert is_disk_backed(on_disk.pixels)
    assert on_disk.pixels.shape == in_memory.pixels.shape and on_disk.pixels.dtype == in_memory.pixels.dtype
    assert np.array_equal(on_disk.pixels, in_memory.pixels)


# -- streamed encoding: same decoded pixels, same metadata ---------------------------------------------

ENCODE_CASES = {
    "rgb": (photo((203, 317, 3)), ""),
    "rgba": (np.dstack([photo((203, 317, 3)), photo((203, 317), seed=5)]), ""),
    "gray": (photo((203, 317)), "L"),
    "gray+alpha": (np.dstack([photo((203, 317))] * 3 + [photo((203, 317), seed=6)]), "LA"),
    "16-bit rgb": (photo((203, 317, 3), np.uint16), "RGB"),
    "16-bit rgba": (np.dstack([photo((203, 317, 3), np.uint16), photo((203, 317), np.uint16, 7)]), "RGBA"),
}


@pytest.mark.parametrize("case", ENCODE_CASES)
@pytest.mark.parametrize("fmt,quality", [("jpg", 95), ("jpg", 80), ("png", 95), ("tiff", 95), ("webp", 90)])
def test_streamed_files_decode_to_the_in_memory_files_pixels(
    case: str, fmt: str, quality: int, tmp_path: Path, force_disk: None
) -> None:
    pixels, mode = ENCODE_CASES[case]
    exif = PILImage.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x0112] = 1
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:format="image/jpeg"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    carried = {
        "icc_profile": srgb_icc(),
        "exif": exif.tobytes().removeprefix(b"Exif\x00\x00"),
        "xmp": xmp,
        "iptc": b"\x1c\x02\x05\x00\x05Title",
        "original_mode": mode,
    }
    disk = disk_array(pixels.shape, pixels.dtype, tmp_path)
    disk[:] = pixels
    streamed = io.BytesIO()
    encode_to_file(Image(disk, **carried), fmt, streamed, quality=quality)
    in_memory = encode_image(Image(pixels.copy(), **carried), fmt, quality=quality)
    ours, theirs = load_image(streamed.getvalue()), load_image(in_memory)
    assert ours.pixels.shape == theirs.pixels.shape
    assert np.array_equal(ours.pixels, theirs.pixels)
    assert ours.original_mode == theirs.original_mode
    # The same metadata writers (pipeline/metadata.py), so the same metadata read back.
    for name in ("icc_profile", "xmp", "iptc", "photoshop"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # Tags, not bytes (a TIFF's IFD0 sits elsewhere); tifffile always writes a resolution of 1 with no
    # unit, as the in-memory 16-bit TIFF (tifffile too) does and the 8-bit one (Pillow) does not.
    resolution = (0x011A, 0x011B, 0x0128) if fmt == "tiff" else ()
    ours_tags, theirs_tags = _exif_tags(ours.exif), _exif_tags(theirs.exif)
    for tag in resolution:
        ours_tags.pop(tag, None)
        theirs_tags.pop(tag, None)
    assert ours_tags == theirs_tags
    assert ours.icc_profile == carried["icc_profile"]
    assert _exif_tag(ours.exif, 0x010F) == "Camera maker"
    # Sizes within a few percent: the same codecs, only the framing (restarts, IDAT split) differs.
    assert abs(len(streamed.getvalue()) - len(in_memory)) < 0.05 * len(in_memory) + 2048


def _exif_tags(raw: bytes | None) -> dict[int, object]:
    exif = PILImage.Exif()
    if raw:
        exif.load(raw)
    return dict(exif)


def _exif_tag(raw: bytes, tag: int) -> object:
    exif = PILImage.Exif()
    exif.load(raw)
    return exif.get(tag)


def test_a_jpeg_of_many_restart_strips_opens_in_pillow(tmp_path: Path, force_disk: None) -> None:
    pixels = photo((400, 300, 3))
    disk = disk_array(pixels.shape, pixels.dtype, tmp_path)
    disk[:] = pixels
    target = tmp_path / "out.jpg"
    with open(target, "wb") as handle:
        encode_to_file(Image(disk), "jpg", handle, quality=80)
    data = target.read_bytes()
    assert data.count(b"\xff\xdd") == 1 and b"\xff\xd0" in data  # one DRI, restart markers
    with PILImage.open(target) as opened:
        opened.load()
        assert opened.size == (300, 400)


# -- end to end: restore_bytes hands back a file -------------------------------------------------------


def test_restore_bytes_streams_a_disk_assembled_output_into_an_unlinked_file(
    tmp_path: Path, force_disk: None
) -> None:
    source = io.BytesIO()
    PILImage.fromarray(photo((60, 80, 3))).save(source, "PNG")
    engine = EngineConfig(scratch_dir=str(tmp_path))
    restored = restore_bytes(
        Restorer(engine, upscaler_loader=loader), source.getvalue(), NO_FACES, max_pixels=10**6
    )
    assert restored.file is not None and restored.data == b""
    assert list(tmp_path.iterdir()) == []  # no name on disk, so no leftover even after a crash
    output = load_image(restored.read_bytes())
    assert (output.width, output.height) == (320, 240)
    assert restored.size == os.fstat(restored.file.fileno()).st_size
    restored.file.close()


# -- faces: no whole-image float copy of a large input -------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_face_detection_and_alignment_read_integer_pixels_as_the_float_image(dtype: type) -> None:
    from pipeline.faces.align import align_face
    from pipeline.faces.detect import _detector_input
    from pipeline.tiling import as_float

    pixels = photo((300, 411, 3), dtype)
    whole_float = as_float(pixels)
    scaled = whole_float * np.float32(255.0)
    expected = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)  # what detection made of the float copy
    assert np.array_equal(_detector_input(pixels), expected)
    matrix = np.array([[0.8, 0.1, 20.0], [-0.1, 0.8, 35.0]])
    assert np.array_equal(align_face(pixels, matrix), align_face(whole_float, matrix))
    shrinking = np.array([[4.0, 0.5, -100.0], [-0.5, 4.0, -50.0]])  # crosses the anti-alias path
    assert np.array_equal(align_face(pixels, shrinking), align_face(whole_float, shrinking))


def test_a_scratch_disk_too_small_for_the_output_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """A write through a mapping into a full disk is a SIGBUS; the blocks are reserved first instead."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(RestoreError, match="not enough disk space"):
            disk_array((2000, 2000, 3), np.uint8, small)
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- the worker publishes the scratch file -------------------------------------------------------------


def test_the_worker_publishes_a_disk_assembled_output_and_frees_its_scratch_file(
    tmp_path: Path, force_disk: None
) -> None:
    import hashlib

    from daemon.job_loop import PipelineProcessor, Worker
    from daemon.store import JobStore
    from tests.support.settings import make_settings
    from tests.support.workspace import files_under

    settings = make_settings(tmp_path, faces=False)
    store = JobStore(settings.db_path)
    processor = PipelineProcessor(settings)
    processor._restorer._loader = loader  # the real processor, the numpy stand-in network
    worker = Worker(settings, store, processor, lambda message: None)
    source = io.BytesIO()
    PILImage.fromarray(photo((30, 40, 3))).save(source, "PNG")
    data = source.getvalue()
    (Path(settings.inbox) / "scan.png").write_bytes(data)
    options = settings.restore_options().to_dict()
    store.add("scan.png", hashlib.sha256(data).hexdigest(), len(data), 0.0, options=options)
    job = worker.run_one()
    assert job is not None and job.state == "done", job.error
    assert files_under(Path(settings.outbox)) == ["scan.png"]
    output = Path(settings.outbox) / "scan.png"
    digest = hashlib.sha256(output.read_bytes()).hexdigest()
    assert store.publishing_of(job.id) == f"{digest}:{output.stat().st_size}"  # hashed from the file
    assert load_image(output.read_bytes()).pixels.shape == (120, 160, 3)
    assert any("assembled on disk" in note for note in job.report["notes"])
    assert list(settings.scratch_dir.iterdir()) == []  # unlinked, and closed after publishing
    assert not [target for target in _open_files() if "scratch" in target]  # every descriptor closed
    store.close()


def _open_files() -> list[str]:
    targets = []
    for link in Path("/proc/self/fd").iterdir():
        try:
            targets.append(os.readlink(link))
        except FileNotFoundError:  # the descriptor iterdir itself used
            continue
    return targets


# -- decoding a large input: no second whole copy ------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_large_pictures_are_copied_out_of_pillow_a_band_at_a_time(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.imageio as imageio

    pixels = photo((333, 271, 4))
    picture = PILImage.fromarray(pixels, "RGBA").convert(mode)
    whole = np.asarray(picture)
    monkeypatch.setattr(imageio, "_BAND_COPY_PIXELS", 0)
    monkeypatch.setattr(imageio, "_BAND_BYTES", 5000)
    banded = imageio._pixel_array(picture)
    assert banded.shape == whole.shape and banded.dtype == whole.dtype
    assert np.array_equal(banded, whole)


@pytest.mark.parametrize("toned", [False, True])
def test_an_rgb_photo_restored_as_gray_goes_back_to_rgb_on_disk_as_in_memory(
    toned: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """photo-gray's colour_back (gray or its own tone) writes a disk-backed output a strip at a time."""
    gray = photo((61, 47))
    if toned:  # sepia: R > G > B by a fixed offset, so the colour path restores luma and puts the tone back
        pixels = np.stack([np.clip(gray.astype(int) + d, 0, 255) for d in (30, 10, -20)], axis=2)
    else:
        pixels = np.stack([gray] * 3, axis=2)
    pixels = pixels.astype(np.uint8)
    engine = EngineConfig(scratch_dir=str(tmp_path))
    in_memory, report = Restorer(engine, upscaler_loader=loader).restore(Image(pixels), NO_FACES)
    assert report.colour is not None and report.colour.path == ("toned" if toned else "gray")
    monkeypatch.setattr(scratch, "IN_MEMORY_MAX_BYTES", 0)
    monkeypatch.setattr(scratch, "STRIP_BYTES", 20_000)
    on_disk, _ = Restorer(engine, upscaler_loader=loader).restore(Image(pixels), NO_FACES)
    assert is_disk_backed(on_disk.pixels) and on_disk.pixels.shape == in_memory.pixels.shape
    assert np.array_equal(on_disk.pixels, in_memory.pixels)


# -- the input side: large pictures decoded into the scratch folder ------------------------------------


def _saved(pixels: np.ndarray, mode: str, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels, mode).save(buffer, fmt, **options)
    return buffer.getvalue()


def _png16(pixels: np.ndarray) -> bytes:
    import cv2

    bgr = (
        pixels
        if pixels.ndim == 2
        else cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR if pixels.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    )
    return cv2.imencode(".png", bgr)[1].tobytes()


def _tiff(pixels: np.ndarray, **options: object) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    photometric = "rgb" if pixels.ndim == 3 else "minisblack"
    extra = ("unassalpha",) if pixels.ndim == 3 and pixels.shape[2] == 4 else None
    tifffile.imwrite(buffer, pixels, photometric=photometric, extrasamples=extra, **options)
    return buffer.getvalue()


def _oriented_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    picture = PILImage.fromarray(pixels)
    exif = picture.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


RGB8, RGB16 = photo((45, 61, 3)), photo((45, 61, 3), np.uint16)
RGBA8, RGBA16 = np.dstack([RGB8, photo((45, 61), seed=8)]), np.dstack([RGB16, photo((45, 61), np.uint16, 9)])
DECODE_CASES = {
    "jpeg rgb": lambda: _saved(RGB8, "RGB", "JPEG", quality=90),
    "progressive jpeg": lambda: _saved(RGB8, "RGB", "JPEG", quality=90, progressive=True),
    "jpeg gray": lambda: _saved(RGB8[:, :, 0], "L", "JPEG"),
    "jpeg rotated (EXIF 6)": lambda: _oriented_jpeg(RGB8, 6),
    "jpeg mirrored (EXIF 2)": lambda: _oriented_jpeg(RGB8, 2),
    "png rgb": lambda: _saved(RGB8, "RGB", "PNG"),
    "png rgba": lambda: _saved(RGBA8, "RGBA", "PNG"),
    "png gray": lambda: _saved(RGB8[:, :, 0], "L", "PNG"),
    "png gray+alpha": lambda: _saved(RGBA8[:, :, ::3], "LA", "PNG"),
    "png 16-bit rgb": lambda: _png16(RGB16),
    "png 16-bit rgba": lambda: _png16(RGBA16),
    "png 16-bit gray": lambda: _png16(RGB16[:, :, 0]),
    "tiff 8-bit rgb, strips": lambda: _tiff(RGB8, compression="zlib", rowsperstrip=7),
    "tiff 16-bit rgba, strips": lambda: _tiff(RGBA16, compression="zlib", rowsperstrip=7),
    "tiff 16-bit gray, predictor": lambda: _tiff(
        photo((45, 61), np.uint16), compression="zlib", predictor=True
    ),
    "tiff 8-bit rgb, uncompressed": lambda: _tiff(RGB8, rowsperstrip=5),
    "tiff 16-bit rgb, big-endian": lambda: _tiff(RGB16, compression="zlib", byteorder=">"),
    "tiff by pillow, deflate": lambda: _saved(RGB8, "RGB", "TIFF", compression="tiff_adobe_deflate"),
    "bmp": lambda: _saved(RGB8, "RGB", "BMP"),
}


@pytest.mark.parametrize("case", DECODE_CASES)
def test_a_large_input_decodes_into_the_scratch_folder_with_the_memory_decodes_pixels(
    case: str, tmp_path: Path
) -> None:
    data = DECODE_CASES[case]()
    in_memory = load_image(data)
    on_disk = load_image(data, scratch=scratch.DiskDecode(tmp_path, available_bytes=0))  # nothing to spare
    assert is_disk_backed(on_disk.pixels), case
    assert any("decoded into the scratch folder" in note for note in on_disk.notes)
    assert on_disk.pixels.shape == in_memory.pixels.shape and on_disk.pixels.dtype == in_memory.pixels.dtype
    assert np.array_equal(on_disk.pixels, in_memory.pixels)
    assert on_disk.pixels.flags.c_contiguous
    assert list(tmp_path.iterdir()) == []  # unlinked: nothing left behind


def test_an_input_with_memory_to_spare_or_a_converted_mode_is_decoded_in_memory(tmp_path: Path) -> None:
    roomy = scratch.DiskDecode(tmp_path, available_bytes=8 << 30)
    assert not is_disk_backed(load_image(_saved(RGB8, "RGB", "JPEG"), scratch=roomy).pixels)
    palette = io.BytesIO()
    PILImage.fromarray(RGB8).convert("P").save(palette, "PNG")  # converted to RGB: Pillow's whole copy
    image = load_image(palette.getvalue(), scratch=scratch.DiskDecode(tmp_path, available_bytes=0))
    assert not is_disk_backed(image.pixels) and image.pixels.shape == (45, 61, 3)


@pytest.mark.parametrize("case", ["jpeg rgb", "png rgba", "png gray+alpha", "png 16-bit rgb", "jpeg gray"])
@pytest.mark.parametrize("pixels", ["colour", "gray as rgb"])
def test_a_disk_decoded_input_restores_to_the_memory_inputs_pixels(
    case: str, pixels: str, tmp_path: Path
) -> None:
    """split_planes' gray copy, the alpha plane through the network and the constant-alpha check work
    a strip at a time on a disk-backed input, with the same result."""
    data = DECODE_CASES[case]()
    if pixels == "gray as rgb":
        decoded = load_image(data).pixels
        gray = decoded if decoded.ndim == 2 else decoded[:, :, :1]
        if decoded.ndim == 2 or decoded.shape[2] == 3:
            data = (
                _png16(np.dstack([gray] * 3))
                if decoded.dtype == np.uint16
                else _saved(np.dstack([gray] * 3).squeeze(), "RGB", "PNG")
            )
        else:
            data = _saved(np.dstack([gray] * 3 + [decoded[:, :, 3:]]), "RGBA", "PNG")
    engine = EngineConfig(scratch_dir=str(tmp_path))
    restorer = Restorer(engine, upscaler_loader=loader)
    expected, report = restorer.restore(load_image(data), NO_FACES)
    image = load_image(data, scratch=scratch.DiskDecode(tmp_path, available_bytes=0))
    assert is_disk_backed(image.pixels)
    restored, disk_report = restorer.restore(image, NO_FACES)
    assert disk_report.colour == report.colour
    if pixels == "gray as rgb":
        assert report.colour is not None and report.colour.path == "gray"
    assert restored.pixels.shape == expected.pixels.shape
    assert np.array_equal(restored.pixels, expected.pixels)


# -- a wide output is upscaled in bands of window columns -----------------------------------------------


@pytest.mark.parametrize("case", ["rgb", "rgba", "gray", "16-bit rgb"])
def test_a_wide_disk_output_upscaled_in_column_bands_has_the_memory_pixels(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.tiling as tiling

    pixels, mode = CASES[case]
    pixels = np.concatenate([pixels] * 8, axis=1)  # 424 px wide: 7 windows of 128 px, 64 px apart

    def wide_loader(model_id: str, engine: EngineConfig, denoise: float | None) -> ConvStackUpscaler:
        return ConvStackUpscaler(tile=128)

    engine = EngineConfig(scratch_dir=str(tmp_path))
    restorer = Restorer(engine, upscaler_loader=wide_loader)
    in_memory, _ = restorer.restore(Image(pixels, original_mode=mode), NO_FACES)
    monkeypatch.setattr(scratch, "IN_MEMORY_MAX_BYTES", 0)
    bands: list[list[tuple[int, int]]] = []

    def about_800_columns(cols: tiling._Axis, scale: int, column_bytes: int) -> list[tuple[int, int]]:
        narrow = tiling.STRIP_MAX_BYTES // 800 if column_bytes else 0
        bands.append(chosen(cols, scale, narrow))
        return bands[-1]

    chosen = tiling.column_bands
    monkeypatch.setattr(tiling, "column_bands", about_800_columns)
    on_disk, _ = restorer.restore(Image(pixels, original_mode=mode), NO_FACES)
    assert len(bands[0]) >= 3  # several bands, so a middle one takes a carry in and gives one out
    assert is_disk_backed(on_disk.pixels) and on_disk.pixels.shape == in_memory.pixels.shape
    if on_disk.pixels.dtype == np.uint8:  # integer sums: the same in any order
        assert np.array_equal(on_disk.pixels, in_memory.pixels)
    else:  # float32 sums in another order: a level at most, rarely
        difference = np.abs(on_disk.pixels.astype(np.int32) - in_memory.pixels.astype(np.int32))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.001


def test_a_tiff_strip_that_inflates_past_its_rows_costs_no_more_than_its_rows(tmp_path: Path) -> None:
    """A deflate bomb in a striped TIFF: the strip is inflated to its rows' size and no further."""
    import zlib

    honest = _tiff(RGB8, compression="zlib", rowsperstrip=45)  # one strip
    strip = zlib.compress(RGB8.tobytes() + bytes(64_000_000), 1)  # 64 MB of zeros after the rows
    offset = honest.index(zlib.compress(RGB8.tobytes(), 6))
    import tifffile

    with tifffile.TiffFile(io.BytesIO(honest)) as tiff:
        page = tiff.pages.first
        assert page.dataoffsets[0] == offset
        count_tag = page.tags["StripByteCounts"]
        data = bytearray(honest[:offset]) + strip + honest[offset + page.databytecounts[0] :]
        shift = len(strip) - page.databytecounts[0]
        data[count_tag.valueoffset : count_tag.valueoffset + 4] = len(strip).to_bytes(4, "little")
    assert shift > 0 and data.index(strip) == offset
    import tracemalloc

    tracemalloc.start()
    try:
        image = load_image(bytes(data), scratch=scratch.DiskDecode(tmp_path, available_bytes=0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert is_disk_backed(image.pixels) and np.array_equal(image.pixels, RGB8)
    assert peak < 20_000_000  # the file and its rows, not the 64 MB the strip inflates to


def test_the_colour_of_a_disk_backed_input_is_measured_on_the_same_sample(tmp_path: Path) -> None:
    """Measuring colour samples every n-th pixel of a large input: a strip at a time from disk."""
    from pipeline.colour import measured_copies

    alpha = np.where(photo((8300, 30), seed=2) > 60, 255, 0).astype(np.uint8)
    rgba = np.dstack([photo((8300, 30, 3)), alpha])  # 8300 rows: every 2nd sampled
    on_disk = disk_array(rgba.shape, rgba.dtype, tmp_path)
    on_disk[:] = rgba
    in_memory = measured_copies(rgba[:, :, :3], rgba[:, :, 3])
    from_disk = measured_copies(on_disk[:, :, :3], on_disk[:, :, 3])
    assert in_memory is not None and from_disk is not None
    for name in ("detail", "detail_opaque", "small", "small_opaque"):
        assert np.array_equal(getattr(from_disk, name), getattr(in_memory, name)), name


def test_restore_bytes_decodes_to_disk_by_the_memory_it_sees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input side follows the same rule as outputs, from available_ram_bytes (cgroup limits in)."""
    import pipeline.backends.base as base
    from pipeline.restorer import decode_scratch

    engine = EngineConfig(scratch_dir=str(tmp_path))
    data = _saved(RGB8, "RGB", "PNG")
    monkeypatch.setattr(base, "available_ram_bytes", lambda: 8 << 30)
    assert not is_disk_backed(load_image(data, scratch=decode_scratch(engine)).pixels)
    monkeypatch.setattr(base, "available_ram_bytes", lambda: 20_000)  # a cgroup nearly full
    chosen = decode_scratch(engine)
    assert chosen.folder == tmp_path and is_disk_backed(load_image(data, scratch=chosen).pixels)
