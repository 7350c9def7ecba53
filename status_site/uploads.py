"""POST /api/v1/jobs: multipart upload of one or more images into the inbox.

Order of events, so a refused upload leaves nothing behind in the inbox:
1. limits while streaming: the file count and each file's size are checked per chunk; the request is
   refused (413) the moment one is exceeded. Parts are spooled to memory (large ones to a temp file in
   the state dir, never the inbox).
2. validation in a thread: the bytes must be an image we can read (PIL header, sane dimensions, the
   decompression-bomb limit, and a full decode so truncated files are caught now, not in the worker).
3. publish: each file goes into the inbox (or inbox/<preset>/) through daemon.publish.publish_bytes, the
   same temp-file + fsync + link protocol the worker uses for outputs; names never overwrite.
4. record: each published file is added to the store right away (same identity rules as the watcher,
   so the watcher later recognises it as known), and the 202 answer carries the job ids.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from PIL import Image as PILImage

from daemon import DiskFullError, publish_bytes, safe_file_name
from daemon.worker import dispose_original
from status_site.problems import Problem

if TYPE_CHECKING:
    from daemon import Job, Settings
    from status_site.context import SiteContext

CHUNK = 256 * 1024
SPOOL_IN_MEMORY = 8 * 1024 * 1024
MAX_ASPECT = 100  # width/height beyond 100:1 is not a photo
FULL_DECODE_MAX_PIXELS = 40_000_000  # above this only JPEGs (decoded at 1/8 size) are fully checked
FORMAT_EXTENSIONS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "TIFF": ".tif",
    "BMP": ".bmp",
    "GIF": ".gif",
    "HEIF": ".heic",
    "MPO": ".jpg",  # multi-picture JPEG from some cameras
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".heic", ".heif"}
UPLOAD_NAME_MAX_BYTES = 200

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover
    pass


@dataclass
class SpooledFile:
    name: str  # as sent by the client (display only)
    safe_name: str  # what we will call it in the inbox
    data: IO[bytes]
    size: int


@dataclass(frozen=True)
class Accepted:
    name: str
    job: Job


def upload_name(raw: str | None) -> str:
    """A client's file name made safe for the inbox (daemon.names' rules), within 200 bytes so that
    a " (12)" suffix or an output extension still fits in 255; NFC (as macOS browsers may send NFD);
    empty names become 'upload'."""
    name = unicodedata.normalize("NFC", raw or "")
    return safe_file_name(name, fallback="upload", max_bytes=UPLOAD_NAME_MAX_BYTES)


async def read_uploads(request: web.Request, settings: Settings) -> tuple[list[SpooledFile], str | None]:
    """Stream the multipart body, enforcing count and size limits before anything is kept."""
    if not request.content_type.startswith("multipart/"):
        raise Problem(
            415,
            "not-multipart",
            "Upload must be multipart/form-data",
            f"send the images as multipart/form-data file fields, not {request.content_type or 'no body'}",
        )
    max_bytes, max_files = settings.upload_max_bytes, settings.upload_max_files
    length = request.content_length
    if length is not None and length > max_files * (max_bytes + 64 * 1024):
        raise _too_large(f"the request is {length} bytes, more than {max_files} files of {max_bytes} bytes")
    files: list[SpooledFile] = []
    preset: str | None = None
    spool_dir = settings.state_dir / "uploads"
    spool_dir.mkdir(parents=True, exist_ok=True)
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise Problem(
                    400, "bad-multipart", "Nested multipart", "nested multipart bodies are not accepted"
                )
            if part.filename is None:
                preset = await _read_field(part)
                continue
            if len(files) >= max_files:
                raise _too_large(f"more than {max_files} files in one upload (upload_max_files)")
            files.append(await _spool_part(part, max_bytes, spool_dir))
    except BaseException:
        for spooled in files:
            spooled.data.close()
        raise
    if not files:
        raise Problem(400, "no-files", "No files", "the upload held no file fields; send images as 'file'")
    return files, preset


async def _read_field(part: BodyPartReader) -> str:
    if part.name != "preset":
        raise Problem(
            400,
            "unknown-field",
            "Unknown form field",
            f"unknown form field {part.name!r}; send images as file fields and optionally a 'preset' field",
        )
    raw = b""
    while chunk := await part.read_chunk(1024):
        raw += chunk
        if len(raw) > 4096:
            raise Problem(400, "bad-field", "Field too long", "the 'preset' field is longer than 4 KiB")
    return raw.decode("utf-8", errors="replace").strip()


async def _spool_part(part: BodyPartReader, max_bytes: int, spool_dir: Path) -> SpooledFile:
    name = part.filename or "upload"
    # Big parts roll over to an unnamed temp file in the state dir (local disk, not /tmp's RAM).
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, dir=spool_dir)  # noqa: SIM115
    size = 0
    try:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(
                    f"{name!r} is larger than the {max_bytes} byte limit per file (upload_max_bytes)"
                )
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    if size == 0:
        spool.close()
        raise Problem(422, "empty-file", "Empty file", f"{name!r} is empty (0 bytes)", file=name)
    spool.seek(0)
    return SpooledFile(name=name, safe_name=upload_name(name), data=spool, size=size)


def _too_large(detail: str) -> Problem:
    return Problem(413, "upload-too-large", "Upload too large", detail)


def validate_image(data: bytes, name: str, max_pixels: int) -> str:
    """Check that `data` is a readable image within limits; return the extension its format uses.

    Blocking and CPU-bound (a full decode catches truncated files): run it in a thread.
    """
    PILImage.MAX_IMAGE_PIXELS = None  # our own limit below, with a message in words
    try:
        image = PILImage.open(io.BytesIO(data))
    except PILImage.UnidentifiedImageError:
        raise _bad(
            name, "is not an image this service can read (JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC)"
        ) from None
    except OSError as exc:
        raise _bad(name, f"could not be opened as an image ({exc})") from None
    with image:
        extension = FORMAT_EXTENSIONS.get(image.format or "")
        if extension is None:
            raise _bad(name, f"is a {image.format} image, which this service does not restore")
        width, height = image.size
        if width < 1 or height < 1 or max(width, height) / min(width, height) > MAX_ASPECT:
            raise _bad(name, f"has absurd dimensions {width}x{height}")
        if width * height > max_pixels:
            raise _bad(
                name,
                f"has {width}x{height} = {width * height / 1e6:.0f} megapixels, more than the "
                f"{max_pixels / 1e6:.0f} megapixel limit (max_input_megapixels)",
            )
    try:
        # verify() checks structure (PNG chunk CRCs, a missing end); a decode catches truncated data.
        # Huge images only get verify(): decoding them here would cost the worker's memory and CPU.
        with PILImage.open(io.BytesIO(data)) as image:
            image.verify()
        if width * height > FULL_DECODE_MAX_PIXELS and image.format != "JPEG":
            return extension
        with PILImage.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
            image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _bad(name, f"is damaged or truncated ({exc})") from None
    return extension


def _bad(name: str, what: str) -> Problem:
    return Problem(422, "bad-image", "Not a usable image", f"{name!r} {what}; nothing was saved", file=name)


def final_name(spooled: SpooledFile, extension: str) -> str:
    """Keep the client's name; give it the image's extension when it has none we recognise."""
    if Path(spooled.safe_name).suffix.lower() in IMAGE_SUFFIXES:
        return spooled.safe_name
    return upload_name(spooled.safe_name + extension)


def check_preset(preset: str | None, settings: Settings) -> str | None:
    if not preset:
        return None
    if preset not in settings.presets:
        raise Problem(
            400,
            "unknown-preset",
            "Unknown preset",
            f"preset {preset!r} is not configured; known: {', '.join(sorted(settings.presets))}",
        )
    return preset


def publish_and_record(ctx: SiteContext, data: bytes, name: str, preset: str | None) -> Job:
    """Blocking: publish into the inbox, record the job as the watcher would, then tell the service
    (on_job wakes the worker; a skipped duplicate's original is disposed of by the configured rule)."""
    settings = ctx.settings
    dest_dir = settings.inbox / preset if preset else settings.inbox
    path = publish_bytes(data, dest_dir, name, settings.file_mode, settings.output_group)
    stat = path.stat()
    relative = PurePosixPath(*path.relative_to(settings.inbox).parts).as_posix()
    options: dict[str, Any] = asdict(settings.restore_options(preset))
    result = ctx.store.add(
        relative,
        hashlib.sha256(data).hexdigest(),
        stat.st_size,
        stat.st_mtime,
        preset=preset,
        options=options,
        duplicate_content=settings.duplicate_content,
    )
    if not result.created:
        return result.job
    if ctx.on_job is not None:
        ctx.on_job(result)
    elif result.job.state == "cancelled":  # no service hook: apply the same originals rule ourselves
        return dispose_original(settings, ctx.store, result.job, path)
    return result.job


async def handle_upload(request: web.Request, ctx: SiteContext) -> list[Accepted]:
    files, raw_preset = await read_uploads(request, ctx.settings)
    try:
        preset = check_preset(raw_preset, ctx.settings)
        max_pixels = int(ctx.settings.max_input_megapixels * 1e6)
        checked: list[tuple[SpooledFile, bytes, str]] = []
        for spooled in files:
            data = await ctx.run_file(spooled.data.read)
            extension = await ctx.run_file(validate_image, data, spooled.name, max_pixels)
            checked.append((spooled, data, final_name(spooled, extension)))
        accepted: list[Accepted] = []
        for spooled, data, name in checked:
            try:
                job = await ctx.run_file(publish_and_record, ctx, data, name, preset)
            except DiskFullError as exc:
                raise Problem(
                    507,
                    "inbox-full",
                    "Inbox full",
                    f"{spooled.name!r} could not be saved: {exc}",
                    accepted=[{"name": a.name, "id": a.job.id} for a in accepted],
                ) from None
            accepted.append(Accepted(name=spooled.name, job=job))
        return accepted
    finally:
        for spooled in files:
            spooled.data.close()
