"""Logging set-up shared by the service and its worker process.

Log lines carry names chosen by share users and uploaders. A filter on every handler escapes control
and bidi characters in the message, so a file called "x.jpg\\n... ERROR ..." cannot forge a log line and
a terminal escape in a name cannot repaint an operator's terminal. Tracebacks are left as they are.
"""

from __future__ import annotations

import logging

from daemon.names import escape_for_log


class EscapeControlCharacters(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_for_log(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


def configure_logging(level: int, fmt: str) -> None:
    """basicConfig, then the escaping filter on every root handler."""
    logging.basicConfig(level=level, format=fmt)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, EscapeControlCharacters) for f in handler.filters):
            handler.addFilter(EscapeControlCharacters())
