"""`restorer restore INPUT... -o OUTDIR`: restore files and folders once, without the daemon.

Folders are walked recursively and mirrored under OUTDIR; junk (dotfiles, ._*, .DS_Store, Thumbs.db,
@eaDir, unfinished downloads) is skipped. One bad file never stops the batch: its error is printed and
reported, and the exit status is 1 when any input failed. Outputs are written atomically (temp file +
rename) and never overwrite an existing file ("photo (1).jpg" instead). A progress bar goes to stderr.

Defaults come from the one settings model (daemon.settings.Settings: defaults < --config < RESTORER_*
environment < flags).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from app.flags import command_parser, settings_from_args

if TYPE_CHECKING:
    from pipeline import RestoreReport

log = logging.getLogger(__name__)

# The settings `restorer restore` takes as flags (--no-face, --format, --denoise: old spellings kept).
RESTORE_FIELDS = (
    *("model", "scale", "max_output_megapixels", "denoise_strength", "output_format", "quality", "strip_gps"),
    *("faces", "face_model", "face_strength", "codeformer_fidelity", "colour_mode"),
    *("backend", "device", "precision", "tile", "threads", "weights_dir", "state_dir"),
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = command_parser(
        sub, "restore", "restore image files or folders into OUTDIR (no daemon)", RESTORE_FIELDS
    )
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE", help="write a JSON report")
    parser.set_defaults(run=run)


@dataclass(frozen=True)
class FileToRestore:
    """An input file, given or found in a given folder (not a daemon job: no queue, no store)."""

    source: Path
    out_dir: Path  # where its output goes (mirrors the folder structure under OUTDIR)


def collect_files(inputs: list[Path], out_root: Path) -> tuple[list[FileToRestore], list[RestoreReport]]:
    """Files as given; folders walked recursively (sorted, junk skipped). Missing inputs become errors."""
    from daemon.names import is_junk, is_junk_dir
    from pipeline import INPUT_EXTENSIONS, RestoreReport

    files: list[FileToRestore] = []
    missing: list[RestoreReport] = []
    for given in inputs:
        if given.is_file():
            files.append(FileToRestore(given, out_root))
        elif given.is_dir():
            for path in sorted(_walk(given, is_junk_dir)):
                relative = path.relative_to(given)
                if is_junk(relative.as_posix()) or path.suffix.lower() not in INPUT_EXTENSIONS:
                    continue
                files.append(FileToRestore(path, out_root / given.resolve().name / relative.parent))
        else:
            missing.append(RestoreReport(input=str(given), error="no such file or folder"))
    return files, missing


def _walk(folder: Path, is_junk_dir: Any) -> list[Path]:
    found = []
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if not is_junk_dir(entry.name):
                found.extend(_walk(entry, is_junk_dir))
        elif entry.is_file():
            found.append(entry)
    return found


class ProgressBar:
    """One line on stderr: file i/n, name, stage and a bar for the current stage."""

    def __init__(self, stream: TextIO, total_files: int) -> None:
        self.stream = stream
        self.total_files = total_files
        self.index = 0
        self.name = ""
        self.interactive = stream.isatty()
        self._last = ""

    def start(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.update("decode", 0, 1)

    def update(self, stage: str, done: int, total: int) -> None:
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{self.index}/{self.total_files}] {self.name[:40]:<40} {stage:<13} [{bar}] {done}/{total}"
        if line == self._last:
            return
        self._last = line
        if self.interactive:
            self.stream.write("\r" + line)
        elif done in (0, total):  # logs and pipes: start and end of each stage only
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self, message: str) -> None:
        clear = "\r\x1b[K" if self.interactive else ""  # replace the bar line on a terminal
        self.stream.write(f"{clear}[{self.index}/{self.total_files}] {message}\n")
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"restorer restore: invalid settings: {error}", file=sys.stderr)
        return 2
    files, reports = collect_files(list(args.inputs), args.output)
    for report in reports:
        print(f"error: {report.input}: {report.error}", file=sys.stderr)
    reports.extend(restore_all(files, settings, sys.stderr))
    if args.report is not None:
        _write_report(args.report, reports)
    failed = sum(1 for report in reports if report.error)
    print(f"{len(reports) - failed} restored, {failed} failed", file=sys.stderr)
    return 1 if failed or not reports else 0


def restore_all(files: list[FileToRestore], settings: Any, stream: TextIO) -> list[RestoreReport]:
    from pipeline import Restorer

    restorer = Restorer(settings.engine_config())
    options = settings.restore_options()
    bar = ProgressBar(stream, len(files))
    reports = []
    for index, file in enumerate(files, start=1):
        bar.start(index, file.source.name)
        report = restore_one(file, restorer, options, settings, bar)
        ok = report.error is None
        bar.finish(f"{file.source} -> {report.output}" if ok else f"error: {file.source}: {report.error}")
        reports.append(report)
    return reports


def restore_one(
    file: FileToRestore, restorer: Any, options: Any, settings: Any, bar: ProgressBar
) -> RestoreReport:
    """One file end to end; every expected failure becomes the report's error, never an exception."""
    from daemon.publish import publish_bytes, publish_file
    from pipeline import DeviceOutOfMemoryError, RestoreError, RestoreReport, restore_bytes

    started = time.perf_counter()
    report = RestoreReport(input=str(file.source))
    try:
        data = file.source.read_bytes()
        restored = restore_bytes(
            restorer, data, options, max_pixels=settings.max_input_pixels, on_progress=bar.update
        )
        name = file.source.stem + restored.extension
        mode, group = settings.file_mode, settings.output_group
        if restored.file is not None:  # a large output, encoded into an unlinked scratch file
            with restored.file:
                output = publish_file(restored.file, file.out_dir, name, mode, group).path
        else:
            output = publish_bytes(restored.data, file.out_dir, name, mode, group)
        report = restored.report
        report.input, report.output = str(file.source), str(output)
    except (RestoreError, DeviceOutOfMemoryError, OSError, MemoryError) as error:
        report.error = _one_line(error)
        log.debug("restore failed for %s", file.source, exc_info=True)
    except Exception as error:  # a bug must cost this file, not the batch; the traceback goes to the log
        log.exception("unexpected error while restoring %s", file.source)
        report.error = f"internal error: {type(error).__name__}: {_one_line(error)}"
    report.seconds = round(time.perf_counter() - started, 3)  # the whole file: read, restore, publish
    return report


def _one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    if isinstance(error, MemoryError):
        return "out of memory"
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _write_report(path: Path, reports: list[RestoreReport]) -> None:
    """The pipeline's own report per file (RestoreReport.to_dict()), failed ones with their error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps([report.to_dict() for report in reports], indent=2) + "\n")
    temp.replace(path)
