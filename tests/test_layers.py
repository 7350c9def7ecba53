"""The package layers hold: import-linter's contracts (pyproject.toml) and a torch-free daemon and site.

app -> status_site -> daemon -> pipeline, nothing upward; status_site uses only daemon's public
surface; the daemon and the status site import without torch (the service and the page start in
a second, and a machine without a GPU stack can still run them).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )


def test_import_contracts_are_kept() -> None:
    result = _python(
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True, no_logo=True))"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


def test_every_daemon_and_status_site_module_imports_without_torch() -> None:
    result = _python(
        "import importlib, pkgutil, sys\n"
        "for package in ('daemon', 'status_site'):\n"
        "    root = importlib.import_module(package)\n"
        "    for module in pkgutil.walk_packages(root.__path__, package + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "        assert 'torch' not in sys.modules, module.name + ' imported torch'\n"
        "print(len([m for m in sys.modules if m.split('.')[0] in ('daemon', 'status_site')]))"
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) >= 20  # every module was really imported


def test_daemon_surface_resolves_and_the_restore_command_imports_no_store() -> None:
    # The package imports its public names on first use: every name resolves to its module's object, and
    # `restorer restore` (settings only) pays for neither the store nor SQLAlchemy at start-up.
    result = _python(
        "import sys\n"
        "from app.cli import build_parser\n"
        "build_parser(['-v', 'restore', 'photo.jpg', '-o', 'out']).parse_args(['restore', 'a', '-o', 'b'])\n"
        "print(sorted(m for m in ('sqlalchemy', 'daemon.store', 'daemon.readmodel') if m in sys.modules))\n"
        "import daemon\n"
        "for name in daemon.__all__:\n"
        "    assert getattr(daemon, name) is not None, name\n"
        "from daemon.store import JobStore\n"
        "assert daemon.JobStore is JobStore and daemon.OriginalLocation.__module__ == 'daemon.originals'\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_the_daemons_public_names_agree_in_its_three_lists() -> None:
    """daemon/__init__.py names its surface three times, because each reader needs its own form: the
    TYPE_CHECKING imports (type checkers), _HOMES (the import on first use at run time) and __all__. They
    must agree (that each resolves: the test above)."""
    import daemon

    tree = ast.parse((REPO / "daemon" / "__init__.py").read_text())
    checking = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    for_checkers = {
        alias.asname or alias.name: (node.module, alias.name)
        for node in checking.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert for_checkers == daemon._HOMES
    eager = {  # names imported with the package itself
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module not in ("__future__", "typing")
        for alias in node.names
    }
    assert sorted(daemon.__all__) == sorted({*daemon._HOMES, *eager})
    assert len(set(daemon.__all__)) == len(daemon.__all__)
