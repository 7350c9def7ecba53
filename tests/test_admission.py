"""daemon.admit: the one admission check for the inbox and uploads, built on pipeline.probe.

The table of good and bad files (tests/image_cases.py) is the one load_image and probe agree on:
admission admits what load_image takes, with its upright size, and refuses the rest in load_image's own
words, before anything is decoded.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from daemon import IMAGE_SUFFIXES, Admitted, Ignored, Refused, admit, media_type
from daemon.originals import TOO_LARGE_ADVICE
from daemon.settings import Settings
from pipeline import BadImageError, load_image
from tests.image_cases import IMAGE_CASES, ImageCase, encoded, pattern
from tests.support.settings import make_settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return make_settings(tmp_path_factory.mktemp("admission"))


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[case.name for case in IMAGE_CASES])
def test_admission_takes_and_refuses_what_load_image_does(case: ImageCase, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_input_megapixels=case.max_pixels / 1e6)
    path = tmp_path / "photo"
    path.write_bytes(case.data)
    with path.open("rb") as handle:
        admission = admit(settings, "album/photo.jpg", handle)
    try:
        image = load_image(case.data, max_pixels=case.max_pixels)
    except BadImageError as refused:
        assert isinstance(admission, Refused), case.name
        assert admission.what == str(refused)  # the pipeline's words, not a copy of them
        assert admission.advice
        return
    assert admission == Admitted(image.source_format, image.width, image.height)
    assert admission.megapixels == pytest.approx(image.width * image.height / 1e6)


class NeverRead(io.BytesIO):
    def read(self, size: int | None = -1, /) -> bytes:
        raise AssertionError("admission read a file it should have refused or ignored unread")


@pytest.mark.parametrize(
    "name", [".DS_Store", "._photo.jpg", "@eaDir/photo.jpg", "photo.jpg.part", "Thumbs.db"]
)
def test_junk_names_are_ignored_without_reading_the_file(settings: Settings, name: str) -> None:
    assert admit(settings, name, NeverRead(b"\x89PNG")) == Ignored(name)


def test_a_file_over_max_input_mb_is_refused_unread(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_input_mb=1)
    admission = admit(settings, "film.jpg", NeverRead(b"\0" * (settings.max_input_bytes + 1)))
    assert admission == Refused("the file is 1 MB, more than the 1 MB limit", TOO_LARGE_ADVICE)


def test_one_list_of_image_suffixes_with_their_media_types() -> None:
    # The lists that disagreed (uploads and eval had no .jpe, eval no .gif) are this one now.
    assert {".jpe", ".gif", ".heif", ".tif"} <= IMAGE_SUFFIXES
    assert media_type("scan.JPE") == "image/jpeg" and media_type("x.tif") == "image/tiff"
    assert media_type("notes.txt") == "application/octet-stream"
    assert all(media_type("x" + suffix).startswith("image/") for suffix in IMAGE_SUFFIXES)


def test_an_admitted_photo_says_its_extension(settings: Settings) -> None:
    admission = admit(settings, "scan", io.BytesIO(encoded(pattern(8, 8), "TIFF")))
    assert isinstance(admission, Admitted) and admission.extension == ".tif"
