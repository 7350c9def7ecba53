"""Where a job's original file is, and what happens to it: the one home for those rules.

A job's `original` says which folder holds the file now and `original_path` where inside it:

    inbox       settings.inbox / input_path (not yet restored, kept, or its move failed)
    archived    settings.archive_dir / original_path (originals = "archive", after publishing)
    failed_dir  settings.failed_dir / original_path, with <name>.error.txt beside it (bad input, crashes)
    deleted     gone (originals = "delete", or it vanished before it was restored)

`location` answers "where is it" for the worker (to read it) and for the status site (to serve it).
`dispose` applies the originals setting after publishing; `move_to_failed` sets a bad file aside with
a reason in words. A failed move or delete is noted on the job, never retried: the recorded version
keeps the file from being processed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from daemon.beneath import FileIdentity, NotAFileError, kind_of, lstat_beneath, read_regular
from daemon.publish import move_file, publish_bytes
from daemon.settings import Settings
from daemon.store import Job, JobStore
from pipeline import (
    AbsurdDimensionsError,
    CorruptImageError,
    DecompressionBombError,
    EmptyFileError,
    NotAnImageError,
    UnsupportedFormatError,
)

log = logging.getLogger(__name__)

ADVICE: dict[type[BaseException], str] = {
    EmptyFileError: "The file is empty (0 bytes); the copy probably failed. Copy it into the inbox again.",
    NotAnImageError: (
        "This is not a picture file. Only JPEG, PNG, WebP, TIFF, BMP, HEIC and GIF images can be restored."
    ),
    UnsupportedFormatError: (
        "This image format cannot be read. Save it as JPEG, PNG or TIFF in an image editor and drop it in "
        "the inbox again."
    ),
    CorruptImageError: (
        "The file is damaged or was cut off while being copied. Copy it again from the original source "
        "(or open and re-save it in an image editor), then drop it in the inbox again."
    ),
    DecompressionBombError: (
        "The image has more pixels than this restorer accepts (max_input_megapixels). Shrink it, or raise "
        "the limit in the configuration if the machine has the memory."
    ),
    AbsurdDimensionsError: "The image has a zero or absurd width/height. Re-save or crop it, then try again.",
}
CRASH_ADVICE = (
    "The restorer process stopped every time it worked on this file, so the file was set aside. It may be "
    "damaged in a way the decoder does not catch, or too large for this machine's memory: try a re-saved "
    "or smaller copy in the inbox. Once the cause is fixed, `restorer jobs retry <id>` (or Retry on the "
    "status page) runs it again."
)
GENERIC_ADVICE = (
    "Check that the file opens in an image viewer. To try again, run `restorer jobs retry {job_id}` or use "
    "Retry on the status page; a corrected file dropped into the inbox is picked up on its own."
)


LINK_ADVICE = (
    "The restorer never follows links in the inbox (a link can point at any file on the server). Copy "
    "the photo itself, not a link to it, into the inbox."
)
SPECIAL_FILE_ADVICE = (
    "Only ordinary photo files can be restored. Copy the photo itself into the inbox; pipes, sockets and "
    "devices are set aside and removed."
)


TOO_LARGE_ADVICE = (
    "Photos are far smaller than this; it is probably a video or an archive. Only photos can be "
    "restored. If it really is a photo, raise max_input_mb in the configuration and drop it in again."
)


def not_a_file_texts(kind: str) -> tuple[str, str]:
    """(what was wrong, what to do) for an inbox entry that is not a regular file."""
    what = f"this is a {kind}, not a photo file"
    return what, LINK_ADVICE if kind == "symbolic link" else SPECIAL_FILE_ADVICE


@dataclass(frozen=True)
class Location:
    """Where an original is: `relative` (posix) inside `folder`, the folder its `place` names."""

    place: str  # "inbox" | "archived" | "failed_dir"
    folder: Path
    relative: str

    @property
    def path(self) -> Path:
        return self.folder / self.relative


def location(settings: Settings, job: Job) -> Location | None:
    """Where the job record says its original is; None once it was deleted (see absence_reason)."""
    if job.original == "inbox":
        return Location("inbox", Path(settings.inbox), job.input_path)
    if job.original == "archived" and job.original_path:
        return Location("archived", Path(settings.archive_dir), job.original_path)
    if job.original == "failed_dir" and job.original_path:
        return Location("failed_dir", Path(settings.failed_dir), job.original_path)
    return None


@dataclass(frozen=True)
class ReadOriginal:
    """The bytes of an original and which file they came from, to check before it is disposed of."""

    location: Location
    data: bytes
    identity: FileIdentity
    sha256: str


def read(location: Location, max_bytes: int | None = None) -> ReadOriginal:
    """Read the original without following any link (NotAFileError for a link, FIFO, socket, device;
    FileTooLargeError beyond max_bytes)."""
    data, identity = read_regular(location.folder, location.relative, max_bytes)
    return ReadOriginal(location, data, identity, hashlib.sha256(data).hexdigest())


def still_the_one_read(read_before: ReadOriginal) -> bool:
    """Is the file at the original's place still the one that was restored? Same device, inode, size and
    mtime; if any differs (touched, copied over), the same content still counts."""
    where = read_before.location
    try:
        now = FileIdentity.of(lstat_beneath(where.folder, where.relative))
    except (OSError, NotAFileError):
        return False
    if now == read_before.identity:
        return True
    try:
        return read(where).sha256 == read_before.sha256
    except (OSError, NotAFileError):
        return False


def _replaced(read_before: ReadOriginal) -> bool:
    """Another file now stands where the original was read (a vanished one is not "replaced")."""
    return os.path.lexists(read_before.location.path) and not still_the_one_read(read_before)


def absence_reason(job: Job) -> str:
    """Why `location` found nothing, in words for the API."""
    if job.original == "deleted":
        return f"the original of job {job.id} was deleted after restoring (originals = delete)"
    return f"job {job.id} does not record where its original is now"


# -- texts ---------------------------------------------------------------------------------------------


def error_text(job: Job, what: str, advice: str) -> str:
    """The <name>.error.txt a user finds beside a file set aside in the failed folder."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{PurePosixPath(job.input_path).name} could not be restored.\n\n"
        f"What was wrong: {what}\n\n"
        f"What to do: {advice}\n\n"
        f"(job {job.id}, attempt {job.attempts}, {when})\n"
    )


def advice_for(exc: BaseException | None, job_id: int) -> str:
    for error_type, advice in ADVICE.items():
        if isinstance(exc, error_type):
            return advice
    return GENERIC_ADVICE.format(job_id=job_id)


# -- moves ---------------------------------------------------------------------------------------------


def move_to_failed(settings: Settings, store: JobStore, job: Job, what: str, advice: str) -> Job:
    """Move the original to failed_dir at the same relative path, with <name>.error.txt beside it."""
    relative = PurePosixPath(job.input_path)
    found = location(settings, job)
    source = _regular_or_removed(settings, store, job, found)
    dest_dir = Path(settings.failed_dir) / relative.parent
    mode, group = settings.file_mode, settings.output_group
    try:
        if source is not None:
            moved = move_file(source, dest_dir, relative.name, None, group, root=Path(settings.failed_dir))
            error_name = moved.name + ".error.txt"
        else:
            moved, error_name = None, relative.name + ".error.txt"
        text = error_text(job, what, advice).encode()
        publish_bytes(text, dest_dir, error_name, mode, group, root=Path(settings.failed_dir))
    except OSError as exc:
        log.error("job %d: could not move %s to the failed folder: %s", job.id, job.input_path, exc)
        return store.add_note(job.id, f"could not move the input to the failed folder: {exc}")
    if moved is None:
        return store.get_or_raise(job.id)
    failed_relative = moved.relative_to(settings.failed_dir).as_posix()
    return store.set_original(job.id, "failed_dir", original_path=failed_relative)


def _regular_or_removed(settings: Settings, store: JobStore, job: Job, found: Location | None) -> Path | None:
    """The original's path if it is a regular file to move; a link, FIFO, socket or device node is removed
    instead (the entry itself, never what a link points at), so nothing it leads to reaches failed/."""
    if found is None:
        return None
    try:
        mode = lstat_beneath(found.folder, found.relative).st_mode
    except (OSError, NotAFileError):
        return None
    if stat.S_ISREG(mode):
        return found.path
    with contextlib.suppress(OSError):
        os.unlink(found.path)  # unlink never follows a link
        store.set_original(job.id, "deleted", note=f"the {kind_of(mode)} was removed from the inbox")
    return None


def dispose(
    settings: Settings, store: JobStore, job: Job, source: Location, read_before: ReadOriginal | None = None
) -> Job:
    """archive / delete / keep the original read from `source`, once the output is published (or for a
    skipped duplicate). Failures are noted on the job, never retried. With `read_before`, a file that was
    replaced meanwhile (a scanner saving scan.jpg again) is left where it is: it is its own job."""
    if read_before is not None and source.place == "inbox" and _replaced(read_before):
        log.warning("job %d: %s was replaced while restoring; left for its own job", job.id, source.path)
        return store.add_note(
            job.id, "the original was replaced while it was restored; the new file stays for its own job"
        )
    if source.place == "archived":
        return job  # a retried done job, run from the archive: the original is already archived
    if source.place == "failed_dir":
        # A retried failed job worked: its error note is obsolete, and the original is handled like
        # any other (for "keep" it stays in the failed folder, where it already is).
        with contextlib.suppress(OSError):
            source.path.with_name(source.path.name + ".error.txt").unlink()
    if settings.originals == "keep":
        return job
    relative = PurePosixPath(job.input_path)
    try:
        if settings.originals == "delete":
            source.path.unlink()
            return store.set_original(job.id, "deleted")
        archive = Path(settings.archive_dir)
        moved = move_file(source.path, archive / relative.parent, relative.name, root=archive)
    except FileNotFoundError:
        return store.add_note(job.id, "the original had already been removed from the inbox")
    except OSError as exc:
        # The job is done; leaving the file in the inbox is safe (its version is recorded, so it is
        # never processed again), so say what happened and move on.
        log.error("job %d: could not %s the original %s: %s", job.id, settings.originals, source.path, exc)
        return store.add_note(job.id, f"could not {settings.originals} the original: {exc.strerror or exc}")
    archived = moved.relative_to(settings.archive_dir).as_posix()
    return store.set_original(job.id, "archived", original_path=archived)
