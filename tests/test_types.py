"""The type checker passes: mypy, configured in pyproject.toml ([tool.mypy]: strict on app/, daemon/,
pipeline/ and status_site/, the exceptions each with its reason), run exactly as `make typecheck` runs it.

The first run on a machine analyses torch's and Ray's hints too (about 50 s of one core; the README's
development section); later runs reuse .mypy_cache and take a second or two.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "daemon", "pipeline", "status_site")


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )


def test_mypy_passes_on_every_package() -> None:
    result = _mypy()
    assert result.returncode == 0, f"mypy (`make typecheck`) found errors:\n{result.stdout}{result.stderr}"
    checked = re.search(r"no issues found in (\d+) source files", result.stdout)
    modules = sum(1 for package in PACKAGES for _ in (REPO / package).rglob("*.py"))
    assert checked is not None and int(checked[1]) == modules, result.stdout  # every module, none skipped


def test_the_configuration_is_strict(tmp_path: Path) -> None:
    # The project's settings, applied to code a strict check refuses: an unannotated function and a bare
    # generic. If strict mode were dropped from pyproject.toml, this would pass silently.
    loose = tmp_path / "loose.py"
    loose.write_text("def double(x):\n    return 2 * x\n\n\nnames: list = []\n")
    result = _mypy(str(loose))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[no-untyped-def]" in result.stdout and "[type-arg]" in result.stdout, result.stdout
