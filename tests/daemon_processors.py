"""Cheap, test-only worker processors: passed to Worker/Service as the per-job stage, or to a real
`restorer serve` through the tests-only launcher (`python -m tests.serve_with
tests.daemon_processors:CopyProcessor serve ...`).

They replace only the pipeline stage; the daemon around them (store, watcher, worker process, publish)
is the real one. What they do depends on the input's bytes, so a test controls them by what it drops
(after FAKE_PHOTO_HEAD, a real 1x1 BMP, which `fake_photo` puts first so intake admits the file):

  b"CRASH..."   the worker process dies (os._exit) - a poison file
  b"HANG..."    the worker stops responding
  b"SLOW<s>..." takes <s> seconds (e.g. SLOW2.0), reporting progress every 0.1 s
  b"BAD..."     raises CorruptImageError (a bad input)
  anything else is returned unchanged, as the same format (extension of the input's magic or ".bin")
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

from PIL import Image as PILImage

from daemon import beneath, originals
from daemon.settings import Settings
from daemon.store import JobStore
from daemon.worker import Processed
from pipeline.types import CorruptImageError, ProgressCallback, RestoreOptions


def _one_pixel_bmp() -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (1, 1)).save(buffer, "BMP")
    return buffer.getvalue()


# Intake admits a file as the pipeline would (daemon/admission.py: its header and structure), so a fake
# input is a real 1x1 BMP, which nothing reads past its pixels; the copy stage reads its instruction
# after them.
FAKE_PHOTO_HEAD = _one_pixel_bmp()


def fake_photo(body: bytes) -> bytes:
    """Bytes intake accepts as an image and the copy stage below copies (or obeys: SLOW, HANG, ...)."""
    return FAKE_PHOTO_HEAD + body


class CopyProcessor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def warm_up(self, options: RestoreOptions) -> dict[str, Any]:
        return {"backend": "copy", "device": "cpu", "precision": "none", "reason": "test processor"}

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        body = data.removeprefix(FAKE_PHOTO_HEAD)
        if body.startswith(b"CRASH"):
            os._exit(17)
        if body.startswith(b"HANG"):
            time.sleep(3600)
        if body.startswith(b"BAD"):
            raise CorruptImageError("the image data stops after 3 bytes (truncated file)")
        if body.startswith(b"SLOW"):
            seconds = float(body[4:].split(b"|")[0])
            steps = max(1, int(seconds / 0.1))
            for step in range(steps):
                time.sleep(seconds / steps)
                if on_progress is not None:
                    on_progress("upscale", step + 1, steps)
        fmt = "png" if data.startswith(b"\x89PNG") else "jpg" if data.startswith(b"\xff\xd8") else "bin"
        # Where it ran, so pool tests can see which worker process (and which GPU id) took the job.
        where = {"pid": os.getpid(), "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
        return Processed(data, fmt, {"backend": "copy", "device": "cpu", "seconds": 0.0, **where})

    def extension(self, fmt: str) -> str:
        return f".{fmt}"


class DecodeProcessor(CopyProcessor):
    """The copy stage behind the pipeline's real decoder. A fake photo with a command (SLOW...) obeys it;
    anything else is decoded by pipeline.load_image first, so a hostile or damaged file fails exactly
    as a real restore makes it fail (the pipeline's BadImageError and reason), and a readable one is
    done with its size and seconds on record, as the ETA's rate needs."""

    commands = (b"CRASH", b"HANG", b"SLOW", b"BAD")

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        if data.startswith(FAKE_PHOTO_HEAD) and data[len(FAKE_PHOTO_HEAD) :].startswith(self.commands):
            return super().process(data, options, on_progress)
        from pipeline import load_image

        started = time.monotonic()
        image = load_image(data, max_pixels=self.settings.max_input_pixels)
        height, width = image.pixels.shape[:2]
        seconds = max(time.monotonic() - started, 0.001)
        copied = super().process(data, options, on_progress)
        report = {**copied.report, "input_size": [width, height], "seconds": seconds}
        return Processed(data, image.source_format, report)


class _KillOnce(CopyProcessor):
    """Fault injection, test code only: the copy stage, plus a patch (in the worker process) that kills the
    worker with SIGKILL the first time a job reaches `point`, as a power cut or the OOM killer would."""

    point = ""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        marker = Path(settings.state_dir) / f"killed-at-{self.point}"
        owner, name = (JobStore, "finish") if self.point == "finish" else (originals, "dispose")
        real = getattr(owner, name)

        def kill_the_first_time(*args: Any, **kwargs: Any) -> Any:
            if not marker.exists():
                marker.write_text("the worker was killed here once")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        setattr(owner, name, kill_the_first_time)


class KillBeforeFinish(_KillOnce):
    """Killed after the output is published, before the job is recorded as done."""

    point = "finish"


class KillBeforeDispose(_KillOnce):
    """Killed after the job is recorded as done, before its original is archived or deleted."""

    point = "dispose"


class CopyWithoutOpenat2(CopyProcessor):
    """The copy stage in a worker that resolves folders with the O_NOFOLLOW chain, as on a kernel without
    openat2 (the launcher does the same in the service when TESTS_NO_OPENAT2=1)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        beneath.use_openat2(False)


class SlowEncodeProcessor:
    """The real per-file path (pipeline.restore_bytes: decode, restore with a small numpy network,
    encode) where encode_image takes `encode_seconds` without a word, as a huge PNG on a slow CPU does.
    Heartbeats come every 0.25 s here (patched in the worker process) so a 2 s hang_seconds has margin."""

    encode_seconds = 6.0

    def __init__(self, settings: Settings) -> None:
        import pipeline.progress
        import pipeline.restorer
        from pipeline import Restorer
        from tests.fake_upscalers import ConvStackUpscaler

        pipeline.progress.TICK_SECONDS = 0.25
        real_encode = pipeline.restorer.encode_image
        seconds = self.encode_seconds

        def slow_encode(*args: Any, **kwargs: Any) -> bytes:
            time.sleep(seconds)  # releases the GIL, as OpenCV's and Pillow's PNG/WebP encoders do
            return real_encode(*args, **kwargs)

        pipeline.restorer.encode_image = slow_encode
        self._restorer = Restorer(
            settings.engine_config(), upscaler_loader=lambda *_: ConvStackUpscaler(scale=4, layers=2)
        )
        self._max_pixels = int(settings.max_input_megapixels * 1_000_000)

    def warm_up(self, options: RestoreOptions) -> dict[str, Any]:
        return {"backend": "numpy", "device": "cpu", "precision": "fp32", "reason": "test network"}

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        from pipeline import restore_bytes

        options = options.replace(faces=False)
        restored = restore_bytes(
            self._restorer, data, options, max_pixels=self._max_pixels, on_progress=on_progress
        )
        return Processed(restored.data, restored.format, restored.report.to_dict())

    def extension(self, fmt: str) -> str:
        from pipeline import FORMAT_EXTENSIONS

        return FORMAT_EXTENSIONS[fmt]


class StuckEncodeProcessor(SlowEncodeProcessor):
    """An encoder that never returns; heartbeats are allowed for 3 s (the deadline, patched small)."""

    encode_seconds = 3600.0

    def __init__(self, settings: Settings) -> None:
        import pipeline.progress

        super().__init__(settings)
        pipeline.progress.STEP_BASE_SECONDS = 3.0
        pipeline.progress.STEP_SECONDS_PER_MEGAPIXEL = 0.0
