"""Admission: whether a file may become a job, decided in one place for the inbox and for uploads.

`admit` is built on pipeline.probe, so intake and uploads refuse exactly what the worker's load_image
would refuse before it decodes a pixel, in the pipeline's words: an empty file, no image, a format we
do not read, a damaged header, absurd dimensions, more pixels than max_input_megapixels, a truncated
JPEG or PNG. Its cost is bounded: the name first (junk is ignored, nothing read), then the size (a file
over max_input_mb, a 20 GB video, is refused unread), then probe reads the open file in pieces (the
header; the PNG chunk checksums and the JPEG end marker), never decoding and never holding the file in
memory. What only a decode finds (damage inside the compressed pixel data) fails the job in the worker.

The admitted size is stored with the job (input_megapixels), so nothing that lists the queue (the ETA)
ever reads a queued file again. The one list of image file suffixes is the pipeline's (what it
reads); status_site gets it, and the media type per suffix, from here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO

from daemon import originals
from daemon.names import is_junk
from daemon.settings import MEGABYTE, MEGAPIXEL, Settings
from pipeline import FORMAT_EXTENSIONS, INPUT_EXTENSIONS, MEDIA_TYPES, SUFFIX_FORMATS, BadImageError, probe

IMAGE_SUFFIXES = INPUT_EXTENSIONS  # file name suffixes of the formats the pipeline reads


@dataclass(frozen=True)
class Admitted:
    """A file the pipeline will take, with what its header says."""

    format: str  # the pipeline's format name: "jpg", "png", ...
    width: int  # upright (EXIF orientation applied), as the worker will see it
    height: int

    @property
    def extension(self) -> str:
        """The usual file name extension of its format (".jpg", ".tif", ...)."""
        return FORMAT_EXTENSIONS[self.format]

    @property
    def megapixels(self) -> float:
        return self.width * self.height / MEGAPIXEL


@dataclass(frozen=True)
class Refused:
    """A file that will never be restored: what is wrong with it, and what to do."""

    what: str
    advice: str


@dataclass(frozen=True)
class Ignored:
    """A name that is not a photo's (a dotfile, a NAS or OS file, an unfinished download)."""

    name: str


Admission = Admitted | Refused | Ignored


def admit(settings: Settings, name: str, handle: IO[bytes]) -> Admission:
    """Whether the open file `handle`, named `name` (its path in the inbox), may become a job.

    Blocking (it reads the file): call it from intake's thread or the file pool. The handle is left
    open, at an unspecified position."""
    if is_junk(name):
        return Ignored(name)
    size = handle.seek(0, io.SEEK_END)
    if size > settings.max_input_bytes:
        return too_large(size, settings.max_input_bytes)
    try:
        info = probe(handle, settings.max_input_pixels)
    except BadImageError as exc:
        return Refused(str(exc), originals.advice_for(exc, 0))
    return Admitted(info.format, info.width, info.height)


def too_large(size: int, limit: int) -> Refused:
    """A file over max_input_mb (intake refuses it unread; the worker checks again before reading)."""
    what = f"the file is {size / MEGABYTE:,.0f} MB, more than the {limit // MEGABYTE} MB limit"
    return Refused(what, originals.TOO_LARGE_ADVICE)


def media_type(name: str) -> str:
    """The media type a file is served with, from its name's suffix."""
    image_format = SUFFIX_FORMATS.get(PurePosixPath(name).suffix.lower())
    return MEDIA_TYPES[image_format] if image_format else "application/octet-stream"
