"""File-name rules (daemon/names.py): every name a share user or uploader chooses ends as a name that
is safe to create on an SMB share, in bounded time; the same rules name uploads, outputs and moves, and
log lines escape what a crafted name could do to a log or a terminal."""

from __future__ import annotations

import logging
import time
import unicodedata
from pathlib import Path, PurePosixPath

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.job_loop import output_name
from daemon.logs import EscapeControlCharacters
from daemon.names import (
    BIDI_CONTROLS,
    NAME_MAX_BYTES,
    RESERVED_STEMS,
    WINDOWS_FORBIDDEN,
    escape_for_log,
    safe_file_name,
    safe_relative_path,
)
from daemon.publish import publish_bytes
from tests.support.site import png_bytes, running_site

# Names people and programs really produce, plus the hostile ones: controls, bidi overrides, lone
# surrogates (undecodable bytes), huge extensions, reserved device names.
NAME_PIECES = st.one_of(
    st.text(max_size=400),
    st.sampled_from(sorted(RESERVED_STEMS)),
    st.sampled_from(sorted(BIDI_CONTROLS | WINDOWS_FORBIDDEN | {".", " ", "..", "\n", "\x85", "\udc80"})),
    st.text(alphabet="é漢字😀.", max_size=300),
    st.builds(lambda n: "." + "x" * n, st.integers(0, 600)),
)
RAW_NAMES = st.lists(NAME_PIECES, max_size=6).map("".join)


def check_safe(name: str) -> None:
    assert name, "never empty"
    assert len(name.encode("utf-8")) <= NAME_MAX_BYTES
    assert not name.startswith(".") and not name.startswith(" ")
    assert not name.endswith(".") and not name.endswith(" ")
    assert name.split(".", 1)[0].rstrip(" ").upper() not in RESERVED_STEMS
    for char in name:
        assert char not in WINDOWS_FORBIDDEN and char not in BIDI_CONTROLS, repr(name)
        assert unicodedata.category(char) not in ("Cc", "Cs"), repr(name)


@settings(max_examples=400, deadline=1000)
@given(RAW_NAMES)
def test_every_name_becomes_a_safe_name_quickly(raw: str) -> None:
    started = time.perf_counter()
    name = safe_file_name(raw)
    assert time.perf_counter() - started < 0.5
    check_safe(name)
    assert safe_file_name(name) == name  # applying the rules again changes nothing


@settings(max_examples=200, deadline=1000)
@given(st.lists(RAW_NAMES, min_size=1, max_size=4))
def test_every_component_of_an_output_path_is_safe(parts: list[str]) -> None:
    folder, name = output_name("/".join(parts), ".png")
    for part in (*folder.parts, name):
        check_safe(part)
    assert not folder.is_absolute() and ".." not in folder.parts


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("holiday photo.jpg", "holiday photo.jpg"),
        ("CON", "_CON"),
        ("con.jpg", "_con.jpg"),
        ("LPT9.tar.gz", "_LPT9.tar.gz"),
        ("COM1 .png", "_COM1 .png"),
        ("console.jpg", "console.jpg"),
        ("photo\u202egpj.exe", "photo_gpj.exe"),
        ("line\nbreak\x85.jpg", "line_break_.jpg"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\scan.tif", "scan.tif"),
        ('a:b*c?"<>|.png', "a_b_c_____.png"),
        ("...", "file"),
        (". 0", "0"),
        (" . .x.jpg", "x.jpg"),
        ("trailing dots...", "trailing dots"),
        ("caf\u0065\u0301.jpg", "caf\u0065\u0301.jpg"),  # NFD kept: the share may hold both forms
    ],
)
def test_known_names(raw: str, expected: str) -> None:
    assert safe_file_name(raw) == expected


def test_a_long_name_keeps_its_extension_and_a_long_extension_is_cut_as_stem() -> None:
    long_stem = safe_file_name("é" * 300 + ".jpeg")
    assert long_stem.endswith(".jpeg") and len(long_stem.encode()) <= NAME_MAX_BYTES
    long_extension = safe_file_name("photo." + "x" * 300)
    assert long_extension.startswith("photo.") and len(long_extension.encode()) == NAME_MAX_BYTES


def test_reserved_and_control_names_never_reach_the_outbox(tmp_path: Path) -> None:
    """Outputs are named after inbox files: the worker's output name and publish apply the rules."""
    folder, name = output_name("AUX/NUL.jpg\u202e.png", ".png")
    assert folder == PurePosixPath("_AUX") and name == "_NUL.jpg_.png"
    assert publish_bytes(b"data", tmp_path, "prn.png", 0o644, None).name == "_prn.png"
    assert publish_bytes(b"data", tmp_path, "a\x1b[2J.png", 0o644, None).name == "a_[2J.png"
    assert safe_relative_path(PurePosixPath("a/../b")).parts == ("a", "b")


def test_log_lines_escape_control_and_bidi_characters(caplog: pytest.LogCaptureFixture) -> None:
    assert escape_for_log("x.jpg\nFAKE ERROR\x1b[31m\u202e") == "x.jpg\\nFAKE ERROR\\x1b[31m\\u202e"
    logger = logging.getLogger("test_names.escape")
    caplog.handler.addFilter(EscapeControlCharacters())
    with caplog.at_level(logging.INFO, logger=logger.name):
        logger.info("new file %s", "evil.jpg\n2026-01-01 ERROR daemon: forged")
    assert caplog.records[-1].getMessage() == "new file evil.jpg\\n2026-01-01 ERROR daemon: forged"
    assert "\n" not in caplog.text.rstrip("\n")


def test_an_upload_with_a_huge_extension_is_answered_at_once(tmp_path: Path) -> None:
    """It looped forever on the event loop before: API, page and watchdog pings all stopped."""
    with running_site(tmp_path) as site:
        name = "photo." + "x" * 300
        started = time.perf_counter()
        response = requests.post(
            f"{site.api}/api/v1/jobs", files=[("file", (name, png_bytes(), "image/png"))], timeout=5
        )
        took = time.perf_counter() - started
        assert response.status_code == 202, response.text
        assert took < 1.0, f"answered after {took:.2f} s"
        stored = response.json()["jobs"][0]["input"]["path"]
        assert stored.startswith("photo.") and len(stored.encode()) <= NAME_MAX_BYTES
        assert requests.get(f"{site.api}/api/v1/health", timeout=5).status_code == 200
