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

Every move and delete acts through daemon.beneath (folder descriptors, no link followed) and only on the
file that was read: its device and inode are compared first (`Seen`), whichever folder it is in (inbox,
failed/, archive/), so a folder swapped for a link, or a file swapped in, is never moved or deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from daemon.beneath import (
    FileIdentity,
    ReplacedError,
    kind_of,
    lstat_beneath,
    read_regular,
    unlink_beneath,
)
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
class Seen:
    """An original as it was read: where, which file (device + inode) and its content's hash. A move or
    delete acts only on this very file (or, if it was copied over with the same content, on that copy)."""

    location: Location
    identity: FileIdentity
    sha256: str


@dataclass(frozen=True)
class ReadOriginal(Seen):
    """The bytes of an original, and which file they came from."""

    data: bytes


def read(location: Location, max_bytes: int | None = None) -> ReadOriginal:
    """Read the original without following any link (NotAFileError for a link, FIFO, socket, device;
    FileTooLargeError beyond max_bytes)."""
    data, identity = read_regular(location.folder, location.relative, max_bytes)
    return ReadOriginal(location, identity, hashlib.sha256(data).hexdigest(), data)


def still_the_one_read(seen: Seen) -> FileIdentity:
    """The file at the original's place, if it is still the one that was read: same device, inode, size
    and mtime, or (touched, copied over) the same content. FileNotFoundError when it is gone, ReplacedError
    when another file stands there, NotAFileError when a link stands on the way."""
    where = seen.location
    status = lstat_beneath(where.folder, where.relative)
    if FileIdentity.of(status) == seen.identity:
        return seen.identity
    now = read(where)
    if now.sha256 != seen.sha256:
        raise ReplacedError(where.relative)
    return now.identity


def absence_reason(job: Job) -> str:
    """Why `location` found nothing, in words for the API."""
    if job.cleaned_at is not None:
        return f"the original of job {job.id} was removed by retention (archive_days / failed_days)"
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


def move_to_failed(
    settings: Settings,
    store: JobStore,
    job: Job,
    what: str,
    advice: str,
    expected: FileIdentity | None = None,
) -> Job:
    """Move the original to failed_dir at the same relative path, with <name>.error.txt beside it.
    expected: the file that was read (None: the regular file found there now)."""
    relative = PurePosixPath(job.input_path)
    found = location(settings, job)
    failed = Path(settings.failed_dir)
    dest_dir = failed / relative.parent
    mode, group = settings.file_mode, settings.output_group
    try:
        moved = None
        if found is not None and _regular_or_removed(store, job, found):
            moved = move_file(
                found.folder,
                found.relative,
                dest_dir,
                relative.name,
                None,
                group,
                root=failed,
                expected=expected,
            )
        error_name = (moved.name if moved is not None else relative.name) + ".error.txt"
        text = error_text(job, what, advice).encode()
        publish_bytes(text, dest_dir, error_name, mode, group, root=failed)
    except OSError as exc:
        log.error("job %d: could not move %s to the failed folder: %s", job.id, job.input_path, exc)
        return store.add_note(job.id, f"could not move the input to the failed folder: {exc}")
    if moved is None:
        return store.get_or_raise(job.id)
    failed_relative = moved.relative_to(settings.failed_dir).as_posix()
    return store.set_original(job.id, "failed_dir", original_path=failed_relative)


def _regular_or_removed(store: JobStore, job: Job, found: Location) -> bool:
    """True if the original is a regular file to move; a link, FIFO, socket or device node is removed
    instead (that very entry, never what a link points at), so nothing it leads to reaches failed/."""
    try:
        status = lstat_beneath(found.folder, found.relative)
    except OSError:  # gone, or a link on the way: nothing to move from here
        return False
    if stat.S_ISREG(status.st_mode):
        return True
    with contextlib.suppress(OSError):
        unlink_beneath(found.folder, found.relative, FileIdentity.of(status))
        store.set_original(
            job.id, "deleted", note=f"the {kind_of(status.st_mode)} was removed from the inbox"
        )
    return False


def dispose(settings: Settings, store: JobStore, job: Job, seen: Seen) -> Job:
    """archive / delete / keep the original that was read (`seen`), once the output is published (or for a
    skipped duplicate). Failures are noted on the job, never retried. A file that was replaced meanwhile
    (a scanner saving scan.jpg again) is left where it is: it is its own job."""
    source = seen.location
    if source.place == "archived":
        return job  # a retried done job, run from the archive: the original is already archived
    if source.place == "failed_dir":
        # A retried failed job worked: its error note is obsolete, and the original is handled like
        # any other (for "keep" it stays in the failed folder, where it already is).
        with contextlib.suppress(OSError):
            unlink_beneath(source.folder, source.relative + ".error.txt")
    if settings.originals == "keep":
        return job
    relative = PurePosixPath(job.input_path)
    try:
        identity = still_the_one_read(seen)
        if settings.originals == "delete":
            unlink_beneath(source.folder, source.relative, identity)
            return store.set_original(job.id, "deleted")
        archive = Path(settings.archive_dir)
        moved = move_file(
            source.folder,
            source.relative,
            archive / relative.parent,
            relative.name,
            root=archive,
            expected=identity,
        )
    except FileNotFoundError:
        return store.add_note(job.id, "the original had already been removed from the inbox")
    except ReplacedError:
        log.warning("job %d: %s was replaced while restoring; left for its own job", job.id, source.path)
        return store.add_note(
            job.id, "the original was replaced while it was restored; the new file stays for its own job"
        )
    except OSError as exc:
        # The job is done; leaving the file where it is is safe (its version is recorded, so it is
        # never processed again), so say what happened and move on.
        log.error("job %d: could not %s the original %s: %s", job.id, settings.originals, source.path, exc)
        return store.add_note(job.id, f"could not {settings.originals} the original: {exc.strerror or exc}")
    archived = moved.relative_to(settings.archive_dir).as_posix()
    return store.set_original(job.id, "archived", original_path=archived)
