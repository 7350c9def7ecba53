"""The status page server: static files, same-origin API, no external resources, never blank."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from status_site.files import PAGE_PREVIEWS, PREVIEW_SIZES
from tests.site_support import Site, running_site

STATIC = Path(__file__).resolve().parent.parent / "status_site" / "static"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path) as running:
        yield running


MODULES = sorted(path.name for path in STATIC.glob("*.js"))


def test_page_and_its_files_are_served_with_types_and_a_strict_csp(site: Site) -> None:
    index = site.get("/", port="page")
    assert index.status_code == 200
    assert index.headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in index.headers["Content-Security-Policy"]
    served = [(name, "text/javascript") for name in MODULES] + [("style.css", "text/css")]
    for name, kind in served:
        response = site.get(f"/static/{name}", port="page")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(kind)
        assert response.content == (STATIC / name).read_bytes()
    assert '<script type="module" src="/static/app.js">' in index.text
    assert 'href="/static/style.css"' in index.text


def test_every_module_a_module_imports_is_served() -> None:
    """The browser resolves `./x.js` to /static/x.js: a typo there would stop the whole page."""
    for name in MODULES:
        for target in re.findall(r'^import [^;]* from "([^"]+)";', (STATIC / name).read_text(), re.M):
            assert target.startswith("./") and target[2:] in MODULES, (name, target)


def test_the_page_takes_its_preview_sizes_from_the_server(site: Site) -> None:
    """/capabilities hands the page its ?max= edges, each one the server keeps (no copy in the scripts)."""
    previews = site.get("/api/v1/capabilities", port="page").json()["previews"]
    assert previews == asdict(PAGE_PREVIEWS)
    assert set(previews.values()) <= set(PREVIEW_SIZES)
    scripts = "".join((STATIC / name).read_text() for name in MODULES)
    for edge in previews.values():
        assert not re.search(rf"\b{edge}\b", scripts), f"a copy of the server's preview size {edge}"


def test_page_needs_nothing_from_the_internet(site: Site) -> None:
    """No CDN, no web fonts, no external script: the page must work on a LAN without internet."""
    for name in ("index.html", "style.css", *MODULES):
        text = (STATIC / name).read_text()
        external = re.findall(r"(?:src|href|url)\s*[=(]\s*[\"']?(?:https?:)?//", text)
        assert external == [], (name, external)
        assert "@import" not in text and "fetch('http" not in text and 'fetch("http' not in text


def test_page_server_answers_the_api_on_the_same_origin(site: Site) -> None:
    """The browser talks to one origin: /api/v1 is mounted on the page server in-process."""
    job_id = site.insert_job(state="failed", error="corrupt data")
    for path in (
        "/api/v1/health",
        "/api/v1/jobs",
        f"/api/v1/jobs/{job_id}",
        "/api/v1/stats",
        "/api/v1/capabilities",
    ):
        via_page = site.get(path, port="page")
        via_api = site.get(path)
        assert via_page.status_code == via_api.status_code == 200, path
        assert "Access-Control-Allow-Origin" not in via_page.headers
    assert site.get(f"/api/v1/jobs/{job_id}", port="page").json()["error"] == "corrupt data"
    assert site.post(f"/api/v1/jobs/{job_id}/retry", port="page").json()["state"] == "queued"


def test_every_element_the_script_looks_up_exists_in_the_page() -> None:
    """A renamed id would leave a section blank or a handler dead; catch it without a browser."""
    html = (STATIC / "index.html").read_text()
    script = "".join((STATIC / name).read_text() for name in MODULES)
    ids = set(re.findall(r'\$\("([a-z0-9-]+)"\)', script))
    missing = sorted(i for i in ids if f'id="{i}"' not in html)
    assert missing == []


def test_buttons_and_inputs_have_accessible_names() -> None:
    html = (STATIC / "index.html").read_text()
    for match in re.finditer(r"<(input|select)\b[^>]*\bid=\"([^\"]+)\"[^>]*>", html):
        tag, element_id = match.group(1), match.group(2)
        if 'type="file"' in match.group(0) or "hidden" in match.group(0):
            continue
        labelled = f'for="{element_id}"' in html or "aria-label" in match.group(0)
        wrapped = re.search(rf"<label>[^<]*<{tag}[^>]*id=\"{element_id}\"", html)
        assert labelled or wrapped, element_id
    for button in re.findall(r"<button\b[^>]*>([^<]*)</button>", html):
        assert button.strip(), "a button without visible text"


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize(
    ("foreground", "background"),
    [
        ("--text", "--bg"),
        ("--text", "--card"),
        ("--muted", "--card"),
        ("--muted", "--bg"),
        ("--accent-text", "--accent"),
        ("--ok-text", "--ok-bg"),
        ("--warn-text", "--warn-bg"),
        ("--down-text", "--down-bg"),
    ],
)
def test_text_colours_meet_wcag_aa_contrast(foreground: str, background: str) -> None:
    css = (STATIC / "style.css").read_text()
    colours = dict(re.findall(r"(--[a-z-]+):\s*(#[0-9a-fA-F]{6});", css))
    assert contrast(colours[foreground], colours[background]) >= 4.5
