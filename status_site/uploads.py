"""POST /api/v1/jobs: multipart upload of one or more images into the inbox.

Order of events, so a refused upload leaves nothing behind in the inbox:
0. admission: at most UPLOAD_SLOTS uploads at once (503 beyond, never a queue of held connections),
   and only while the spool disk (the state dir's) has room for the declared Content-Length beside
   what the other uploads in flight claimed, keeping min_free_mb free (507; SpoolSpace).
1. limits while streaming: the file count and each file's size are checked per chunk; the request is
   refused (413) the moment one is exceeded; each received chunk is counted against the spool disk's
   free space across all uploads in flight, chunked bodies too (507); the whole body must arrive
   within upload_deadline_seconds, and a client that sends nothing for UPLOAD_IDLE_SECONDS is cut off
   sooner (408). Every part streams to an unnamed temp file in the state dir (never RAM, never the
   inbox), hashed on the way.
   The form's other fields: an optional `preset` and optional `model` fields (several make a chain, in
   order), each bounded in length and number.
2. choices: the preset must be configured; each model id is only compared with the ids the composition
   lists as selectable (ctx.list_models: weights here, an upscale or restore network), never used as a
   path, so an unknown, refused, missing or face model is refused (400) before anything is written.
   Then admission in a thread, from the spooled file: daemon.admit, the check intake applies to dropped
   files (the pipeline's own header checks: an image it reads, sane dimensions, max_input_megapixels,
   max_input_mb, a complete JPEG or PNG), so an upload is refused exactly when a dropped file would be,
   in the same words; nothing is decoded.
3. publish: each file goes into the inbox (or inbox/<preset>/) through daemon.publish.publish_file, the
   same temp-file + fsync + link protocol the worker uses for outputs; names never overwrite.
4. record: each published file becomes a job right away through daemon.intake.enqueue_file, the one
   path the watcher uses too (so the watcher later recognises it as known), with the chosen model in
   its options, and the 202 answer carries the job ids.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tempfile
import time
import unicodedata
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, TypeVar

from aiohttp import BodyPartReader, web

from daemon import (
    IMAGE_SUFFIXES,
    Admitted,
    DiskFullError,
    FileVersion,
    Ignored,
    PublishError,
    admit,
    enqueue_file,
    publish_file,
    safe_file_name,
)
from status_site.problems import Problem

if TYPE_CHECKING:
    from daemon import Job, Settings
    from status_site.context import SiteContext

CHUNK = 256 * 1024
UPLOAD_SLOTS = 4  # uploads streaming at once; each holds a connection and a spool file
UPLOAD_IDLE_SECONDS = 60.0  # a client that sends nothing for this long is cut off before its deadline
T = TypeVar("T")
UPLOAD_NAME_MAX_BYTES = 200
PRESET_FIELD_MAX_BYTES = 4096
MODEL_FIELD_MAX_BYTES = 255  # a model id is a file's stem: never longer than a file name
MODEL_FIELDS_MAX = 8  # models in one upload's chain


@dataclass
class SpooledFile:
    name: str  # as sent by the client (display only)
    safe_name: str  # what we will call it in the inbox
    data: IO[bytes]  # an unnamed temp file in the state dir
    size: int
    sha256: str


@dataclass
class UploadForm:
    """What the multipart body held: the spooled files and the form's fields, as sent (unchecked)."""

    files: list[SpooledFile]
    preset: str | None = None
    models: list[str] = field(default_factory=list)  # `model` fields in order: a chain


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


class SpoolSpace:
    """Room on the spool disk (the state dir's), shared by every upload in flight (one per SiteContext).

    Every received chunk is written only after a statvfs in the same file-pool call shows room for it
    beside min_free_mb (the job database lives there too) and beside what the other uploads in flight
    declared (Content-Length) and have not sent yet; a chunked body declares nothing and is held to
    the same rule per chunk. The bytes uploads received are on the disk, so the measurement counts them
    exactly, and a refused upload's are free again the moment its spool file closes. Concurrent writes
    can overshoot by at most one chunk per file-pool thread.
    """

    def __init__(self, spool_dir: Path, reserve_bytes: int) -> None:
        self.spool_dir = spool_dir
        self.reserve_bytes = reserve_bytes
        self.claimed = 0  # declared by uploads in flight and not received yet

    async def claim(self, ctx: SiteContext, declared: int) -> SpoolClaim:
        """Admission: the declared length must fit now, beside the other uploads' claims."""
        free = await ctx.run_file(_free_bytes, self.spool_dir)
        if declared > free - self.claimed - self.reserve_bytes:
            raise self.full(free, declared)
        self.claimed += declared
        return SpoolClaim(self, declared)

    def release(self, claim: SpoolClaim) -> None:
        self.claimed -= claim.left
        claim.left = 0

    def full(self, free: int, needed: int) -> Problem:
        mb = 1024 * 1024
        return Problem(
            507,
            "spool-full",
            "No room for the upload",
            f"the daemon's state disk has {free // mb} MB free, of which uploads in progress have "
            f"declared {self.claimed // mb} MB still to come; this upload needs {needed // mb + 1} MB "
            f"more and {self.reserve_bytes // mb} MB must stay free (min_free_mb)",
        )


@dataclass
class SpoolClaim:
    space: SpoolSpace
    left: int  # declared bytes not received yet

    def others(self) -> int:
        """What the other uploads in flight declared and have not sent yet."""
        return self.space.claimed - self.left

    def received(self, size: int) -> None:
        taken = min(size, self.left)
        self.left -= taken
        self.space.claimed -= taken


def _free_bytes(spool_dir: Path) -> int:
    spool_dir.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(spool_dir)
    return stats.f_bavail * stats.f_frsize


@dataclass
class Receiving:
    """What every read of one upload's body is held to: its deadline, and the spool space."""

    ctx: SiteContext
    claim: SpoolClaim
    deadline: float  # time.monotonic() by which the whole body must have arrived
    seconds: float  # upload_deadline_seconds, for the refusal

    def keep_free(self) -> int:
        """Bytes the spool disk must keep free beside this upload's next chunk: the reserve, and what
        the other uploads declared and have not sent (this upload's own claim is what it writes)."""
        return self.ctx.spool_space.reserve_bytes + self.claim.others()

    async def read(self, step: Awaitable[T]) -> T:
        """One read of the body: cut off at the deadline, or after UPLOAD_IDLE_SECONDS of silence; a
        client that hangs up mid-upload is an ordinary refusal (no traceback in the log)."""
        left = self.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(step, max(0.0, min(left, UPLOAD_IDLE_SECONDS)))
        except ConnectionError:
            raise Problem(
                400, "upload-interrupted", "Upload interrupted", "the client closed the connection"
            ) from None
        except TimeoutError:
            if left <= UPLOAD_IDLE_SECONDS:
                raise Problem(
                    408,
                    "upload-too-slow",
                    "Upload too slow",
                    f"the upload did not arrive within {self.seconds:.0f} s (upload_deadline_seconds); "
                    "nothing was saved",
                ) from None
            raise Problem(
                408,
                "upload-stalled",
                "Upload stalled",
                f"the client sent nothing for {UPLOAD_IDLE_SECONDS:.0f} s; nothing was saved",
            ) from None


async def read_uploads(request: web.Request, ctx: SiteContext) -> UploadForm:
    """Stream the multipart body to disk, enforcing count and size limits before anything is kept."""
    settings = ctx.settings
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
    receiving = Receiving(
        ctx=ctx,
        claim=await ctx.spool_space.claim(ctx, length or 0),
        deadline=time.monotonic() + settings.upload_deadline_seconds,
        seconds=settings.upload_deadline_seconds,
    )
    form = UploadForm(files=[])
    files = form.files
    try:
        reader = await request.multipart()
        while (part := await receiving.read(reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                raise Problem(
                    400, "bad-multipart", "Nested multipart", "nested multipart bodies are not accepted"
                )
            if part.filename is None:
                await _read_field(part, form)
                continue
            if len(files) >= max_files:
                raise _too_large(f"more than {max_files} files in one upload (upload_max_files)")
            files.append(await _spool_part(part, receiving, max_bytes))
    except BaseException:
        for spooled in files:
            spooled.data.close()
        raise
    finally:
        ctx.spool_space.release(receiving.claim)
    if not files:
        raise Problem(400, "no-files", "No files", "the upload held no file fields; send images as 'file'")
    return form


async def _read_field(part: BodyPartReader, form: UploadForm) -> None:
    """A `preset` or `model` field into the form, read no further than its bound."""
    if part.name == "preset":
        form.preset = await _field_text(part, PRESET_FIELD_MAX_BYTES)
    elif part.name == "model":
        if len(form.models) >= MODEL_FIELDS_MAX:
            raise Problem(
                400,
                "bad-field",
                "Too many models",
                f"more than {MODEL_FIELDS_MAX} 'model' fields in one upload",
            )
        form.models.append(await _field_text(part, MODEL_FIELD_MAX_BYTES))
    else:
        raise Problem(
            400,
            "unknown-field",
            "Unknown form field",
            f"unknown form field {part.name!r}; send images as file fields and optionally a 'preset' field "
            "and 'model' fields",
        )


async def _field_text(part: BodyPartReader, max_bytes: int) -> str:
    raw = b""
    while chunk := await part.read_chunk(1024):
        raw += chunk
        if len(raw) > max_bytes:
            raise Problem(
                400,
                "bad-field",
                "Field too long",
                f"the {part.name!r} field is longer than {max_bytes} bytes",
            )
    return raw.decode("utf-8", errors="replace").strip()


async def _spool_part(part: BodyPartReader, receiving: Receiving, max_bytes: int) -> SpooledFile:
    name = part.filename or "upload"
    ctx = receiving.ctx
    # Unnamed (O_TMPFILE where the filesystem has it): a crash mid-upload leaves nothing to clean up.
    spool: IO[bytes] = tempfile.TemporaryFile(dir=ctx.spool_space.spool_dir)  # noqa: SIM115
    digest = hashlib.sha256()
    size = 0
    try:
        while chunk := await receiving.read(part.read_chunk(CHUNK)):
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(
                    f"{name!r} is larger than the {max_bytes} byte limit per file (upload_max_bytes)"
                )
            room = await ctx.run_file(_write_if_room, spool, digest, chunk, receiving.keep_free())
            if room is not None:
                raise ctx.spool_space.full(room, len(chunk))
            receiving.claim.received(len(chunk))
    except OSError as exc:
        spool.close()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise Problem(
                507, "spool-full", "No room for the upload", f"the state disk filled up: {exc}"
            ) from None
        raise
    except BaseException:
        spool.close()
        raise
    if size == 0:
        spool.close()
        raise Problem(422, "empty-file", "Empty file", f"{name!r} is empty (0 bytes)", file=name)
    return SpooledFile(
        name=name, safe_name=upload_name(name), data=spool, size=size, sha256=digest.hexdigest()
    )


def _write_if_room(spool: IO[bytes], digest: Any, chunk: bytes, keep_free: int) -> int | None:
    """Write and hash the chunk if the spool disk keeps `keep_free` bytes free after it; else return
    the free space (nothing written)."""
    stats = os.fstatvfs(spool.fileno())
    free = stats.f_bavail * stats.f_frsize
    if free - len(chunk) < keep_free:
        return free
    spool.write(chunk)
    digest.update(chunk)
    return None


def _too_large(detail: str) -> Problem:
    return Problem(413, "upload-too-large", "Upload too large", detail)


def admit_upload(settings: Settings, spooled: SpooledFile) -> Admitted:
    """The spooled file admitted as a dropped file would be (daemon.admit), or a 422 in its words.

    Blocking (it reads the spool file, never whole, and decodes nothing): run it in a thread."""
    admission = admit(settings, spooled.safe_name, spooled.data)
    if isinstance(admission, Admitted):
        return admission
    if isinstance(admission, Ignored):
        raise _bad(spooled.name, "has a name the inbox ignores (a dotfile, a system file or a download)")
    raise _bad(spooled.name, f"was refused: {admission.what}")


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


def check_models(chosen: list[str], listed: list[dict[str, Any]]) -> tuple[str, ...] | None:
    """The upload's chain, each id one the composition lists as selectable (pipeline's ModelStatus:
    weights here, an upscale or restore network); None when the form named no model (the preset's).

    An id is only ever compared with the listed ids, never used as a path or a lookup key."""
    if not chosen:
        return None
    by_id = {str(model.get("id")): model for model in listed}
    usable = sorted(model_id for model_id, model in by_id.items() if model.get("selectable") is True)
    for model_id in chosen:
        if by_id.get(model_id, {}).get("selectable") is not True:
            raise Problem(
                400,
                "unusable-model",
                "Model not usable",
                f"{_why_not(model_id, by_id.get(model_id))}; usable here: {', '.join(usable) or 'none'}"
                " (leave 'model' out for the preset's model)",
            )
    return tuple(chosen)


def _why_not(model_id: str, listed: dict[str, Any] | None) -> str:
    if not model_id:
        return "the 'model' field is empty"
    if listed is None:
        return f"model {model_id!r} is not a model here"
    if listed.get("state") == "refused":
        return f"model {model_id!r} was refused: {listed.get('reason')}"
    if listed.get("state") == "missing":
        return f"model {model_id!r} has no weights here"
    return f"model {model_id!r} is a {listed.get('purpose')} model, not an upscale or restore model"


async def chosen_models(ctx: SiteContext, chosen: list[str]) -> tuple[str, ...] | None:
    """check_models against the models listed now (the weights folder scanned, in the file pool)."""
    if not chosen:
        return None
    listed = await ctx.run_file(ctx.list_models) if ctx.list_models is not None else []
    return check_models(chosen, listed)


def publish_and_record(
    ctx: SiteContext,
    spooled: SpooledFile,
    admitted: Admitted,
    name: str,
    preset: str | None,
    model: tuple[str, ...] | None = None,
) -> Job:
    """Blocking: publish into the inbox (inbox/<preset>/ applies the preset, as for dropped files),
    record the job the way the watcher does (with the upload's model, if it chose one), then tell the
    service (on_job wakes the worker)."""
    settings = ctx.settings
    dest_dir = settings.inbox / preset if preset else settings.inbox
    # root: the preset's folder is reached from the inbox without following a link (a share user may have
    # planted inbox/2x -> /elsewhere, or swap it for one at any moment): refused, never written through.
    published = publish_file(
        spooled.data, dest_dir, name, settings.file_mode, settings.output_group, root=settings.inbox
    )
    relative = PurePosixPath(*published.path.relative_to(settings.inbox).parts).as_posix()
    version = FileVersion(spooled.sha256, published.identity.size, published.mtime, published.identity)
    result = enqueue_file(settings, ctx.store, relative, version, admitted, model=model)
    if result.created and ctx.on_job is not None:
        ctx.on_job(result)
    return result.job


async def handle_upload(request: web.Request, ctx: SiteContext) -> list[Accepted]:
    if ctx.upload_slots.locked():
        problem = Problem(
            503,
            "uploads-busy",
            "Too many uploads at once",
            f"{UPLOAD_SLOTS} uploads are already streaming; try again in a moment",
        )
        problem.headers["Retry-After"] = "10"
        raise problem
    async with ctx.upload_slots:
        return await _handle_upload(request, ctx)


async def _handle_upload(request: web.Request, ctx: SiteContext) -> list[Accepted]:
    form = await read_uploads(request, ctx)
    files = form.files
    try:
        preset = check_preset(form.preset, ctx.settings)
        model = await chosen_models(ctx, form.models)
        checked: list[tuple[SpooledFile, Admitted]] = []
        for spooled in files:
            checked.append((spooled, await ctx.run_file(admit_upload, ctx.settings, spooled)))
        accepted: list[Accepted] = []
        for spooled, admitted in checked:
            name = final_name(spooled, admitted.extension)
            try:
                job = await ctx.run_file(publish_and_record, ctx, spooled, admitted, name, preset, model)
            except DiskFullError as exc:
                raise Problem(
                    507,
                    "inbox-full",
                    "Inbox full",
                    f"{spooled.name!r} could not be saved: {exc}",
                    accepted=[{"name": a.name, "id": a.job.id} for a in accepted],
                ) from None
            except PublishError as exc:  # the preset's folder is a link planted in the share
                raise Problem(
                    409,
                    "inbox-folder-refused",
                    "Inbox folder refused",
                    f"{spooled.name!r} could not be saved: {exc}",
                    accepted=[{"name": a.name, "id": a.job.id} for a in accepted],
                ) from None
            accepted.append(Accepted(name=spooled.name, job=job))
        return accepted
    finally:
        for spooled in files:
            spooled.data.close()
