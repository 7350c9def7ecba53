"""Job files for the API: which file a job's input or output is, and small previews of them.

A request only ever names a job id. The file is looked up from the job record and reached below the folder
it must live in through daemon's open_beneath (folder descriptors, no link followed anywhere, not even one
pointing inside the folder), so a stored path with `..`, an absolute path, a symlink, or a folder swapped
for a symlink never reaches anything outside.
Previews decode and resize in the caller's thread pool (they are CPU work), never on the event loop,
after a header check against the pipeline's pixel limit; big decodes run in a child process with a
memory limit (preview_child.py), so a preview never grows the daemon by more than ~50 MB.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import TYPE_CHECKING, BinaryIO, Literal

from PIL import Image as PILImage
from PIL import ImageFile

from daemon import NotAFileError, lstat_beneath, open_beneath, original_absence_reason, original_location
from status_site.problems import Problem

if TYPE_CHECKING:
    from daemon import Job, Settings

Which = Literal["input", "output"]
PREVIEW_MIN, PREVIEW_MAX = 16, 8192
# ?max= snaps down to one of these (the page asks for PAGE_PREVIEWS' edges).
PREVIEW_SIZES = (16, 32, 64, 128, 256, 320, 512, 1024, 2048, 4096, 8192)
PREVIEW_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "MPO", "HEIF")
# Decoded in the daemon (thread pool, two at a time): ~48 MB as 8-bit RGB. Bigger: a child process.
IN_PROCESS_MAX_PIXELS = 16_000_000
CHILD_SECONDS = 120
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
class PagePreviews:
    """The preview edges the status page asks for, each one of PREVIEW_SIZES. /capabilities hands them to the
    page (`previews`), so app.js keeps no copy that could drift from what the server snaps ?max= to."""

    thumbnail: int = 320  # the queue's and history's thumbnails
    inspector: int = 4096  # what the inspector opens on
    largest: int = PREVIEW_MAX  # the inspector's true 1:1; a bigger output opens in a tab


PAGE_PREVIEWS = PagePreviews()


@dataclass(frozen=True)
class JobFile:
    path: Path  # folder / relative, by name: for its name and type, never to open it again
    folder: Path
    size_bytes: int
    mtime_ns: int
    relative: str = ""
    inode: tuple[int, int] = (0, 0)  # (device, inode) of the file that was located

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
    found = original_location(settings, job)
    if found is None:
        return original_absence_reason(job)
    return found.folder, found.relative


def locate(job: Job, which: Which, settings: Settings) -> JobFile:
    """The job's file: a regular file below its folder, reached without following any link. Blocking (lstat):
    call in a thread."""
    location = stored_location(job, which, settings)
    if isinstance(location, str):
        raise Problem(404, "file-not-available", "File not available", location)
    folder, relative = Path(location[0]), location[1]
    try:
        status = lstat_beneath(folder, relative)
    except NotAFileError:  # `..`, an absolute path, or a link on the way
        raise _refused(job, which) from None
    except OSError:
        raise Problem(
            404,
            "file-not-available",
            "File not available",
            f"the {which} of job {job.id} ({relative}) is no longer in {folder}",
        ) from None
    if not S_ISREG(status.st_mode):
        raise _refused(job, which)
    return JobFile(
        folder / relative,
        folder,
        status.st_size,
        status.st_mtime_ns,
        relative,
        (status.st_dev, status.st_ino),
    )


def _refused(job: Job, which: Which) -> Problem:
    return Problem(
        403,
        "outside-folder",
        "File outside its folder",
        f"the {which} of job {job.id} does not resolve to a regular file inside its folder "
        "(a symlink or path pointing elsewhere is never served)",
    )


def parse_max(raw: str | None) -> int | None:
    """`?max=N` snapped down to one of PREVIEW_SIZES: distinct values cannot multiply the previews
    made and cached, and the preview is still at most N pixels wide and high."""
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
    return max(size for size in PREVIEW_SIZES if size <= value)


def open_checked(found: JobFile) -> BinaryIO:
    """Open the located file again below its folder without following any link, and check it is still the
    file `locate` found: a file or folder swapped for a symlink after `locate` is refused, not served."""
    try:
        fd = open_beneath(found.folder, found.relative)
    except NotAFileError:
        raise Problem(
            403, "outside-folder", "File outside its folder", "the file changed into something else"
        ) from None
    except OSError:
        raise Problem(
            404, "file-not-available", "File not available", f"{found.path.name} changed or vanished just now"
        ) from None
    status = os.fstat(fd)
    if (status.st_dev, status.st_ino) != found.inode:
        os.close(fd)
        raise Problem(
            404, "file-not-available", "File not available", f"{found.path.name} changed or vanished just now"
        )
    return os.fdopen(fd, "rb")


class NeedsOwnProcess(Exception):
    """The preview would decode more than IN_PROCESS_MAX_PIXELS here: make it in a child process."""


# What Pillow's plugins raise on a damaged or hostile header or pixel stream (any file a share user drops
# may be one): parse errors, short reads, nonsense values. Warnings count too, for a process that runs
# with warnings as errors (the test suite): a TIFF tag pointing past the end of the file warns.
IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    SyntaxError,
    IndexError,
    KeyError,
    TypeError,
    ValueError,
    EOFError,
    OSError,
    struct.error,
    Warning,
)
# Pillow's own bomb check, which the GIF plugin (a frame larger than the screen), the WebP plugin (its
# canvas) and TIFF's loader (its tiles) run inside the plugin, whatever Image.open would do. It is not
# our limit: a GIF or WebP of 179 MP or more gets no preview even where max_input_megapixels allows it
# (a rare photo; Pillow's DecompressionBombError from Pillow's decompression_bomb.gif was a 500).
BOMB_ERRORS: tuple[type[BaseException], ...] = (
    PILImage.DecompressionBombError,
    PILImage.DecompressionBombWarning,
)


def open_header(handle: BinaryIO) -> ImageFile.ImageFile:
    """Parse the header with the Pillow plugin of one of PREVIEW_FORMATS; nothing is decoded yet.

    Not PIL.Image.open: its bomb check (a warning above 89 MP, an error above 179 MP) is not our limit
    (max_input_megapixels), and switching it off means changing Pillow's MAX_IMAGE_PIXELS for every
    thread of the daemon. The formats are the ones we restore, so no exotic decoder ever runs here.
    Every header it cannot read, bombs included, is a 422 Problem: never another exception, so the
    readers of queued files (previews, the ETA) answer normally whatever a share user drops.
    """
    PILImage.init()
    handle.seek(0)
    prefix = handle.read(16)
    for name in PREVIEW_FORMATS:
        factory, accept = PILImage.OPEN.get(name, (None, None))
        if factory is None or (accept is not None and accept(prefix) is not True):
            continue
        handle.seek(0)
        try:
            return factory(handle, "")
        except BOMB_ERRORS as exc:
            raise _bomb(exc) from None
        except IMAGE_ERRORS:
            continue
    raise Problem(
        422,
        "not-an-image",
        "Not an image",
        "the file is not an image this service previews (JPEG, PNG, WebP, GIF, TIFF, BMP, HEIC)",
    )


def _bomb(exc: BaseException) -> Problem:
    return Problem(
        422,
        "image-too-large",
        "Image too large to preview",
        f"the file's header claims an image too large to read safely ({exc})",
    )


def preview_pixel_limit(which: Which, settings: Settings) -> int:
    """The pipeline's own limit: what it accepts as input, and what it may write as output."""
    if which == "input":
        return int(settings.max_input_megapixels * 1e6)
    if settings.max_output_megapixels is not None:
        return int(settings.max_output_megapixels * 1e6)
    return int(settings.max_input_megapixels * 1e6 * 16)  # a 4x model makes 16x the pixels


def check_pixels(image: PILImage.Image, max_pixels: int) -> None:
    """Refuse, from the header alone, an image the pipeline would refuse too."""
    if image.width * image.height > max_pixels:
        raise Problem(
            422,
            "image-too-large",
            "Image too large to preview",
            f"{image.width}x{image.height} is {image.width * image.height / 1e6:.0f} megapixels, more than "
            f"the {max_pixels / 1e6:.0f} megapixel limit (max_input_megapixels)",
        )


def make_preview(
    handle: BinaryIO, max_edge: int, max_pixels: int, in_process_max_pixels: int = IN_PROCESS_MAX_PIXELS
) -> tuple[bytes, str]:
    """The image scaled to fit max_edge x max_edge, as JPEG (PNG when it has transparency).

    Blocking and CPU-bound: run it in a thread. The header is checked against max_pixels first; JPEG
    decodes at 1/2..1/8 size directly (draft). Raises NeedsOwnProcess when what would be decoded is more
    than in_process_max_pixels, so big decodes never grow the daemon process (preview_child.py).
    """
    with open_header(handle) as image:
        check_pixels(image, max_pixels)
        if image.format in ("JPEG", "MPO"):
            image.draft("RGB", (max_edge, max_edge))
        if image.width * image.height > in_process_max_pixels:
            raise NeedsOwnProcess()
        try:
            image.load()
        except BOMB_ERRORS as exc:  # TIFF checks its tile size only here
            raise _bomb(exc) from None
        except IMAGE_ERRORS as exc:
            raise Problem(
                422, "preview-failed", "Preview failed", f"the image could not be decoded ({exc})"
            ) from None
        return _render(image, max_edge)


_ORIENTATION_TRANSPOSE = {
    2: PILImage.Transpose.FLIP_LEFT_RIGHT,
    3: PILImage.Transpose.ROTATE_180,
    4: PILImage.Transpose.FLIP_TOP_BOTTOM,
    5: PILImage.Transpose.TRANSPOSE,
    6: PILImage.Transpose.ROTATE_270,
    7: PILImage.Transpose.TRANSVERSE,
    8: PILImage.Transpose.ROTATE_90,
}
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA")


def _render(image: ImageFile.ImageFile, max_edge: int) -> tuple[bytes, str]:
    orientation = header_orientation(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    # Shrink by a whole factor first (cheap, no full-size copies), then orient, convert and filter.
    factor = max(image.width, image.height) // (2 * max_edge)
    small = image.reduce(factor) if factor >= 2 and image.mode in _REDUCIBLE_MODES else image
    if orientation in _ORIENTATION_TRANSPOSE:
        small = small.transpose(_ORIENTATION_TRANSPOSE[orientation])
    if small.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits (PIL's convert would clip at 255).
        small = small.point(lambda v: v / 256).convert("L")
    converted = small.convert("RGBA" if has_alpha else "RGB")
    converted.thumbnail((max_edge, max_edge), PILImage.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if has_alpha:
        converted.save(out, "PNG", optimize=False, compress_level=3)
        return out.getvalue(), "image/png"
    # Big previews serve the inspector's close-up views: keep compression artefacts out of them.
    converted.save(out, "JPEG", quality=95 if max_edge >= 2048 else 85, optimize=False)
    return out.getvalue(), "image/jpeg"


def make_preview_in_child(handle: BinaryIO, max_edge: int, max_pixels: int) -> tuple[bytes, str]:
    """make_preview in a short-lived child process with a memory limit (preview_child.py): a big
    decode costs the child's memory, never the daemon's, and is gone when the child exits."""
    handle.seek(0)
    command = [sys.executable, "-m", "status_site.preview_child", str(max_edge), str(max_pixels)]
    try:
        result = subprocess.run(
            command, stdin=handle, capture_output=True, timeout=CHILD_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise Problem(
            422, "preview-failed", "Preview failed", f"making the preview took more than {CHILD_SECONDS} s"
        ) from None
    if result.returncode == 0:
        content_type, _, body = result.stdout.partition(b"\n")
        return body, content_type.decode("ascii")
    try:
        refusal = json.loads(result.stderr.decode("utf-8", errors="replace").strip().splitlines()[-1])
        raise Problem(refusal["status"], refusal["slug"], refusal["title"], refusal["detail"])
    except (ValueError, IndexError, KeyError, TypeError):
        raise Problem(
            422,
            "preview-failed",
            "Preview failed",
            f"the preview process failed (exit {result.returncode}): the image needs more memory than "
            "a preview may use, or is damaged",
        ) from None


def fits_without_resize(handle: BinaryIO, max_edge: int) -> bool:
    """True when the file is already small enough and in a format browsers show (serve it as is)."""
    with open_header(handle) as image:
        if image.format not in BROWSER_FORMATS or image.mode not in ("RGB", "RGBA", "L", "LA", "P"):
            return False
        return max(image.size) <= max_edge and header_orientation(image) == 1


def header_orientation(image: ImageFile.ImageFile) -> int:
    """EXIF orientation without decoding: Pillow's PNG getexif() decodes the whole image to look for an
    eXIf chunk after the pixels (a 900 MP bomb allocated 3 GB that way), so PNG reads only what its
    header held. Damaged EXIF (a broken TIFF header inside APP1, a value that is no number) is no
    orientation: the preview is shown as stored."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if not raw:
                return 1
            exif = PILImage.Exif()
            exif.load(raw)
            return int(exif.get(0x0112, 1))
        return int(image.getexif().get(0x0112, 1))
    except IMAGE_ERRORS:
        return 1


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
