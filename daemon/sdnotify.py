"""sd_notify without a library: one datagram per message to $NOTIFY_SOCKET.

systemd (Type=notify) passes the socket path in NOTIFY_SOCKET; a leading '@' means a Linux abstract
socket (the '@' becomes a NUL byte). WatchdogSec= arrives as WATCHDOG_USEC (and WATCHDOG_PID, which
must be ours). Outside systemd NOTIFY_SOCKET is unset and every call is a cheap no-op.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(raw: str) -> str:
    return "\0" + raw[1:] if raw.startswith("@") else raw


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send e.g. "READY=1" or "WATCHDOG=1"; True if a notify socket took it."""
    env = os.environ if environ is None else environ
    raw = env.get("NOTIFY_SOCKET")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(_address(raw))
            sock.sendall(message.encode())
    except OSError as exc:  # systemd gone or socket misconfigured: log it, the daemon keeps working
        log.warning("sd_notify %r to %s failed: %s", message, raw, exc)
        return False
    return True


def watchdog_seconds(environ: Mapping[str, str] | None = None) -> float | None:
    """The WatchdogSec systemd expects pings within, if it applies to this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000
