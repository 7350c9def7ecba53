"""The one home for file-name rules: what a name chosen by a share user or an uploader becomes before
the daemon creates a file with it, and how such a name is written into a log line.

Inbox names are chosen by whoever can write the share (SMB, NFS, SFTP, uploads), and outputs are named
after them, so every name the daemon creates goes through `safe_file_name`: one path component, no
control or bidi-override characters, none of the characters or names Windows refuses (the outbox is an
SMB share), at most 255 bytes. It is a pure function that always terminates. The names of what arrives
that are not photos at all (dotfiles, NAS and OS folders, unfinished downloads) are here too: `is_junk`.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import PurePosixPath

# Files and folders that operating systems, NAS boxes and sync tools drop next to real photos.
JUNK_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
JUNK_DIR_NAMES = frozenset({"@eadir", "__macosx", "#recycle", "$recycle.bin", "#snapshot", "@recycle"})
JUNK_SUFFIXES = (".part", ".crdownload", ".tmp", ".partial", ".download", ".swp", "~")
NAME_MAX_BYTES = 255  # NAME_MAX on Linux filesystems and SMB
EXTENSION_MAX_BYTES = 16  # a longer "extension" is treated as part of the stem
# Windows refuses these as a base name, with or without an extension (CON.txt, lpt1.tar.gz).
RESERVED_STEMS = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{device}{n}" for device in ("COM", "LPT") for n in [*"123456789", "¹", "²", "³"]}
)
# Bidi controls reorder what people see: "photo\u202egpj.exe" is shown as "photoexe.jpg".
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Characters SMB/Windows refuse in names, and the path separators.
WINDOWS_FORBIDDEN = frozenset('/\\:*?"<>|')
_EXTENSION = re.compile(rf"\.[0-9A-Za-z]{{1,{EXTENSION_MAX_BYTES - 1}}}")


def _replace_char(char: str) -> str:
    category = unicodedata.category(char)
    # Cc: C0/C1 controls and DEL; Cs: lone surrogates (undecodable bytes from os.fsdecode).
    if category in ("Cc", "Cs") or char in BIDI_CONTROLS or char in WINDOWS_FORBIDDEN:
        return "_"
    return char


def _cut_to_bytes(text: str, limit: int) -> str:
    """The longest prefix of `text` within `limit` UTF-8 bytes, cut on a character boundary."""
    return text.encode("utf-8")[: max(0, limit)].decode("utf-8", errors="ignore")


def split_extension(name: str) -> tuple[str, str]:
    """(stem, extension); only a short alphanumeric suffix counts as an extension."""
    dot = name.rfind(".")
    if dot > 0 and _EXTENSION.fullmatch(name[dot:]):
        return name[:dot], name[dot:]
    return name, ""


def _is_reserved(name: str) -> bool:
    # Windows compares the part before the first dot, ignoring case and trailing spaces.
    return name.split(".", 1)[0].rstrip(" ").upper() in RESERVED_STEMS


def safe_file_name(raw: str | None, fallback: str = "file", max_bytes: int = NAME_MAX_BYTES) -> str:
    """A name safe to create on the outbox/inbox share; never empty, at most `max_bytes` bytes.

    Only the last path component of `raw` is kept. Control, bidi-override and Windows-forbidden
    characters become "_"; leading dots (the watcher ignores dotfiles), leading/trailing spaces and
    trailing dots (Windows drops them) go; a reserved Windows name gets a "_" prefix; a name that is
    too long loses the end of its stem, keeping a short extension.
    """
    # Not NFC-normalised: a share may hold NFC and NFD names side by side, and outputs mirror them.
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(_replace_char(char) for char in name)
    name = name.strip(" .")  # in any mix: ". 0" loses its dot and its space
    if not name:
        name = fallback
    if _is_reserved(name):
        name = "_" + name
    stem, extension = split_extension(name)
    if len(name.encode("utf-8")) > max_bytes:
        stem = _cut_to_bytes(stem, max_bytes - len(extension.encode("utf-8"))).rstrip(" .")
        name = (stem or fallback) + extension
    return _cut_to_bytes(name, max_bytes)


def safe_relative_path(relative: PurePosixPath) -> PurePosixPath:
    """Each component of a relative path (inbox subfolders, then the name) made safe."""
    parts = [safe_file_name(part) for part in relative.parts if part not in ("", ".", "..", "/")]
    return PurePosixPath(*parts) if parts else PurePosixPath(safe_file_name(None))


def escape_for_log(text: str) -> str:
    """`text` with control and bidi characters written as escapes, so a crafted file name cannot
    forge log lines (newline) or hide what it is (terminal escapes, right-to-left override)."""
    if all(char.isprintable() or char == " " for char in text):
        return text
    escaped = []
    for char in text:
        if char.isprintable() or char == " ":
            escaped.append(char)
        else:
            escaped.append(char.encode("unicode_escape", errors="backslashreplace").decode("ascii"))
    return "".join(escaped)


def is_junk(relative_path: str) -> bool:
    """True for names to ignore: dotfiles and dot-folders (.DS_Store, ._x, .stfolder/), NAS/OS folders
    (@eaDir/, __MACOSX/), Thumbs.db, desktop.ini, and unfinished downloads (*.part, *.crdownload, *.tmp)."""
    parts = PurePosixPath(relative_path).parts
    if not parts:
        return True
    for folder in parts[:-1]:
        if folder.startswith(".") or folder.lower() in JUNK_DIR_NAMES:
            return True
    name = parts[-1]
    lower = name.lower()
    return name.startswith(".") or lower in JUNK_FILE_NAMES or lower.endswith(JUNK_SUFFIXES)


def is_junk_dir(name: str) -> bool:
    return name.startswith(".") or name.lower() in JUNK_DIR_NAMES
