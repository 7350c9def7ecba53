"""probe() reads only the header and refuses exactly what load_image refuses, with the same error type;
what it reports (format, upright size, mode) is what load_image then returns."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from pipeline import BadImageError, CorruptImageError, ImageInfo, load_image, probe
from tests.image_cases import IMAGE_CASES, ImageCase, png_header_only


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_probe_and_load_image_agree(case: ImageCase) -> None:
    if case.error is not None:
        with pytest.raises(case.error) as probed:
            probe(case.data, case.max_pixels)
        with pytest.raises(case.error) as loaded:
            load_image(case.data, max_pixels=case.max_pixels)
        assert type(probed.value) is type(loaded.value)
        assert str(probed.value) == str(loaded.value)
        return
    info = probe(case.data, case.max_pixels)
    image = load_image(case.data, max_pixels=case.max_pixels)
    assert info == ImageInfo(case.format, *case.size, image.original_mode)
    assert (image.source_format, image.width, image.height) == (case.format, *case.size)


def test_the_table_covers_every_error_type_and_every_readable_format() -> None:
    errors = {case.error.__name__ for case in IMAGE_CASES if case.error is not None}
    assert errors >= {
        "EmptyFileError",
        "NotAnImageError",
        "UnsupportedFormatError",
        "CorruptImageError",
        "DecompressionBombError",
        "AbsurdDimensionsError",
    }
    formats = {case.format for case in IMAGE_CASES if case.error is None}
    assert formats == {"jpg", "png", "webp", "tiff", "bmp", "gif", "heic"}


def test_probe_answers_from_the_header_alone() -> None:
    # A 4000x3000 PNG header with no pixel data behind it: probe
    # answers from the header, and only the full decode finds that the pixels are missing.
    header = png_header_only(4000, 3000)
    assert probe(header, 50_000_000) == ImageInfo("png", 4000, 3000, "RGB")
    with pytest.raises(CorruptImageError):
        load_image(header, max_pixels=50_000_000)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_probe_of_an_open_file_says_what_probe_of_its_bytes_says(case: ImageCase, tmp_path: Path) -> None:
    """Admission (daemon/admission.py) hands probe the open file: same answers, same words."""
    path = tmp_path / "file"
    path.write_bytes(case.data)
    with path.open("rb") as handle:
        try:
            from_file: object = probe(handle, case.max_pixels)
        except BadImageError as refused:
            from_file = (type(refused), str(refused))
    try:
        from_bytes: object = probe(case.data, case.max_pixels)
    except BadImageError as refused:
        from_bytes = (type(refused), str(refused))
    assert from_file == from_bytes


def test_probe_reads_a_big_file_in_pieces_never_whole(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    PILImage.fromarray(np.zeros((2000, 2500, 3), np.uint8)).save(path, compress_level=0)
    assert path.stat().st_size > 14_000_000  # every chunk's CRC is checked: the whole file is read
    tracemalloc.start()
    try:
        with path.open("rb") as handle:
            assert probe(handle, 50_000_000) == ImageInfo("png", 2500, 2000, "RGB")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000, f"probe held {peak / 1e6:.1f} MB of a {path.stat().st_size / 1e6:.0f} MB file"
