"""Moved to tests/support (issue 21 item 6); these names stay importable for tests written before."""

from tests.support.paths import REPO, RESTORER
from tests.support.serve import COPY_PROCESSOR, ServeProcess
from tests.support.settings import make_settings
from tests.support.waiting import wait_for
from tests.support.workspace import files_under

__all__ = ["COPY_PROCESSOR", "REPO", "RESTORER", "ServeProcess", "files_under", "make_settings", "wait_for"]
