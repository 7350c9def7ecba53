"""Where things are: the checkout, the installed `restorer` script, Debian's chromium."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
RESTORER = Path(sys.executable).parent / "restorer"
# Debian's chromium, driven by Playwright (never a downloaded browser); flags keep it off the network.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
