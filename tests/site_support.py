"""Moved to tests/support (issue 21 item 6); these names stay importable for tests written before."""

from tests.support.lan import LanAnswer, LanClient, LanPair, lan_client, lan_pair
from tests.support.paths import CHROMIUM, CHROMIUM_ARGS, REPO
from tests.support.ports import free_port
from tests.support.settings import folders, make_settings
from tests.support.site import (
    InProcessSite,
    ServedSite,
    Site,
    jpeg_bytes,
    png_bytes,
    running_serve,
    running_site,
)

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "REPO",
    "InProcessSite",
    "LanAnswer",
    "LanClient",
    "LanPair",
    "ServedSite",
    "Site",
    "folders",
    "free_port",
    "jpeg_bytes",
    "lan_client",
    "lan_pair",
    "make_settings",
    "png_bytes",
    "running_serve",
    "running_site",
]
