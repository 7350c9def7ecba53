"""`python -m status_site.preview_child MAX_EDGE MAX_PIXELS < image`: one big preview, in its own process.

The daemon hands over the already opened and checked file as stdin. This process caps its own address
space first, so an image that needs more memory than a preview may use fails here (MemoryError, exit
1) instead of growing the daemon. Output: the content type, a newline, the preview bytes. A refusal
(not an image, too large) is one JSON line on stderr with the problem's fields, exit 3.
"""

from __future__ import annotations

import json
import resource
import sys

from status_site.files import make_preview
from status_site.problems import Problem

BASE_ADDRESS_SPACE = 1024 * 1024 * 1024  # the interpreter, Pillow and its codecs
BYTES_PER_PIXEL = 12  # the decoded image, its reduced copy and the codec's buffers


def main(argv: list[str]) -> int:
    max_edge, max_pixels = int(argv[0]), int(argv[1])
    limit = BASE_ADDRESS_SPACE + BYTES_PER_PIXEL * max_pixels
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        body, content_type = make_preview(
            sys.stdin.buffer, max_edge, max_pixels, in_process_max_pixels=max_pixels
        )
    except Problem as problem:
        fields = {
            "status": problem.status,
            "slug": problem.slug,
            "title": problem.title,
            "detail": problem.detail,
        }
        sys.stderr.write(json.dumps(fields) + "\n")
        return 3
    sys.stdout.buffer.write(content_type.encode("ascii") + b"\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
