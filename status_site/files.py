"""Job files for the API: which file a job's input or output is, and small previews of them.

A request only ever names a job id. The file is looked up from the job record, joined to the folder it
must live in, resolved (following symlinks) and refused unless it still lies inside that folder, so a
stored path with `..`, an absolute path or a symlink pointing elsewhere never reaches `open`.
Previews decode and resize in the caller's thread pool (they are CPU work), never on the event loop.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, BinaryIO, Literal

from PIL import Image as PILImage
from PIL import ImageOps

from status_site.problems import Problem

if TYPE_CHECKING:
    from daemon import Job, Settings

Which = Literal["input", "output"]
PREVIEW_MIN, PREVIEW_MAX = 16, 8192
# Formats every browser shows; anything else (TIFF, HEIC, BMP, 16-bit PNG...) is converted for previews.
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".heic": "image/heic",
    ".heif": "image/heif",
}

try:  # HEIC inputs (iPhone photos) get previews when pillow-heif is present.
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - pillow-heif is a dependency; previews just skip HEIC without it
    pass


@dataclass(frozen=True)
class JobFile:
    path: Path  # resolved, inside `folder`
    folder: Path
    size_bytes: int
    mtime_ns: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.path.suffix.lower(), "application/octet-stream")

    @property
    def etag(self) -> str:
        return f'"{self.size_bytes:x}-{self.mtime_ns:x}"'


def stored_location(job: Job, which: Which, settings: Settings) -> tuple[Path, str] | str:
    """(folder, relative path) the job record names for its input or output, or why there is none."""
    if which == "output":
        if not job.output_path:
            return f"job {job.id} has no output ({job.state})"
        return settings.outbox, job.output_path
    original = getattr(job, "original", "inbox")
    if original == "inbox":
        return settings.inbox, job.input_path
    if original == "archived" and job.archived_path:
        return settings.archive_dir, job.archived_path
    if original == "failed_dir" and job.archived_path:
        return settings.failed_dir, job.archived_path
    if original == "deleted":
        return f"the original of job {job.id} was deleted after restoring (originals = delete)"
    return f"job {job.id} does not record where its original is now"


def locate(job: Job, which: Which, settings: Settings) -> JobFile:
    """The job's file, checked to lie inside its folder. Blocking (stat, realpath): call in a thread."""
    location = stored_location(job, which, settings)
    if isinstance(location, str):
        raise Problem(404, "file-not-available", "File not available", location)
    folder, relative = location
    root = Path(os.path.realpath(folder))
    candidate = Path(relative)
    if candidate.is_absolute() or ".." in candidate.parts:
        raise _refused(job, which)
    resolved = Path(os.path.realpath(root / candidate))
    if resolved == root or not resolved.is_relative_to(root):
        raise _refused(job, which)
    try:
        stat = resolved.stat()
    except OSError:
        raise Problem(
            404,
            "file-not-available",
            "File not available",
            f"the {which} of job {job.id} ({relative}) is no longer in {folder}",
        ) from None
    if not resolved.is_file():
        raise _refused(job, which)
    return JobFile(path=resolved, folder=root, size_bytes=stat.st_size, mtime_ns=stat.st_mtime_ns)


def _refused(job: Job, which: Which) -> Problem:
    return Problem(
        403,
        "outside-folder",
        "File outside its folder",
        f"the {which} of job {job.id} does not resolve to a regular file inside its folder "
        "(a symlink or path pointing elsewhere is never served)",
    )


def parse_max(raw: str | None) -> int | None:
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not PREVIEW_MIN <= value <= PREVIEW_MAX:
        raise Problem(
            400,
            "bad-preview-size",
            "Bad preview size",
            f"max must be a whole number of pixels from {PREVIEW_MIN} to {PREVIEW_MAX}, got {raw!r}",
        )
    return value


def open_checked(found: JobFile) -> BinaryIO:
    """Open the located file without following a symlink, then check that the opened file is still
    the one inside its folder: a file swapped for a symlink after `locate` is refused, not served."""
    try:
        fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        raise Problem(
            404, "file-not-available", "File not available", f"{found.path.name} changed or vanished just now"
        ) from None
    handle = os.fdopen(fd, "rb")
    try:
        opened = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else found.path
        stat = os.fstat(fd)
        inside = opened.is_relative_to(found.folder) and opened != found.folder
        if not inside or not S_ISREG(stat.st_mode):
            raise Problem(
                403, "outside-folder", "File outside its folder", "the file changed into something else"
            )
    except BaseException:
        handle.close()
        raise
    return handle


def make_preview(path: Path | BinaryIO, max_edge: int, max_pixels: int) -> tuple[bytes, str]:
    """The image scaled to fit max_edge x max_edge, as JPEG (PNG when it has transparency).

    Blocking and CPU-bound: run it in a thread. `draft` lets JPEG decode at 1/2..1/8 size directly.
    """
    PILImage.MAX_IMAGE_PIXELS = None  # we check the pixel count ourselves, below
    with PILImage.open(path) as image:
        if image.width * image.height > max_pixels:
            raise Problem(
                422,
                "image-too-large",
                "Image too large to preview",
                f"{image.width}x{image.height} is more than the {max_pixels} pixel limit for previews",
            )
        if image.format == "JPEG":
            image.draft("RGB", (max_edge, max_edge))
        image.seek(0)
        oriented = ImageOps.exif_transpose(image)
        has_alpha = oriented.mode in ("RGBA", "LA", "PA") or "transparency" in oriented.info
        if oriented.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits (PIL's convert would clip at 255).
            oriented = oriented.point(lambda v: v / 256).convert("L")
        converted = oriented.convert("RGBA" if has_alpha else "RGB")
        converted.thumbnail((max_edge, max_edge), PILImage.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        if has_alpha:
            converted.save(out, "PNG", optimize=False, compress_level=3)
            return out.getvalue(), "image/png"
        # Big previews serve the inspector's close-up views: keep compression artefacts out of them.
        converted.save(out, "JPEG", quality=95 if max_edge >= 2048 else 85, optimize=False)
        return out.getvalue(), "image/jpeg"


def fits_without_resize(path: Path | BinaryIO, max_edge: int) -> bool:
    """True when the file is already small enough and in a format browsers show (serve it as is)."""
    with PILImage.open(path) as image:
        orientation = image.getexif().get(0x0112, 1) if image.format in ("JPEG", "WEBP", "PNG") else 1
        return (
            image.format in BROWSER_FORMATS
            and image.mode in ("RGB", "RGBA", "L", "LA", "P")
            and max(image.size) <= max_edge
            and orientation == 1
        )


class PreviewCache:
    """Recently made previews, so many viewers polling the same thumbnails decode each image once."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._used = 0
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, int, int, int], tuple[bytes, str]] = OrderedDict()

    def get(self, key: tuple[str, int, int, int]) -> tuple[bytes, str] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: tuple[str, int, int, int], item: tuple[bytes, str]) -> None:
        size = len(item[0])
        if size > self._max_bytes // 4:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = item
            self._used += size
            while self._used > self._max_bytes:
                _, (old, _type) = self._items.popitem(last=False)
                self._used -= len(old)
