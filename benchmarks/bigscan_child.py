"""One restore in this process, for a parent that measures it (benchmarks/bench_bigscan.py, and
tests/test_bigscan_cgroup.py, which runs it inside a memory-limited cgroup).

    python benchmarks/bigscan_child.py INPUT OUTDIR SCRATCH [--network standin|MODEL] [--format F]
        [--in-memory] [--state-dir DIR] [--decode-only]

Reads INPUT, restores it 4x without faces through pipeline.restore_bytes (the worker's path), publishes
the result into OUTDIR as the worker does (publish_file / publish_bytes) and prints one JSON line:
output path, size, report notes, and this process's peak RSS. --in-memory forces today's in-memory
assembly for every size (the "before"); --network standin uses the nearest-neighbour stand-in network.
--decode-only decodes INPUT as restore_bytes does (into the scratch folder when it is larger than this
process keeps in memory) and prints its size, a checksum of its pixels, the decode's notes and the peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("input", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("scratch", type=Path)
    parser.add_argument("--network", default="standin")
    parser.add_argument("--format", default="same")
    parser.add_argument("--in-memory", action="store_true")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--decode-only", action="store_true")
    args = parser.parse_args()

    from daemon.publish import publish_bytes, publish_file
    from daemon.settings import Settings
    from pipeline import RestoreOptions, Restorer, restore_bytes

    if args.in_memory:
        import pipeline.scratch

        pipeline.scratch.IN_MEMORY_MAX_BYTES = 1 << 62
        pipeline.scratch.IN_MEMORY_FRACTION = 1e9
    if args.decode_only:
        return decode_only(args.input, args.scratch)
    options = RestoreOptions(faces=False, output_format=args.format)
    if args.network == "standin":
        from pipeline.evaluation.standin import nearest_loader
        from pipeline.types import EngineConfig

        restorer = Restorer(EngineConfig(scratch_dir=str(args.scratch)), upscaler_loader=nearest_loader)
    else:
        settings = Settings.load(state_dir=args.state_dir, model=args.network, faces=False)
        restorer = Restorer(dataclasses.replace(settings.engine_config(), scratch_dir=str(args.scratch)))
        options = options.replace(model=args.network)
    sampler = StageSampler()
    restored = restore_bytes(
        restorer, args.input.read_bytes(), options, max_pixels=400_000_000, on_progress=sampler.stage
    )
    sampler.stage("publish", 0, 1)
    name = args.input.stem + restored.extension
    if restored.file is not None:
        with restored.file:
            output = publish_file(restored.file, args.outdir, name, 0o644, None).path
    else:
        output = publish_bytes(restored.data, args.outdir, name, 0o644, None)
    peak = own_peak_rss()
    report = restored.report
    print(
        json.dumps(
            {
                "output": str(output),
                "size": report.output_size,
                "notes": report.notes,
                "seconds": report.stage_seconds,
                "peak_rss": peak,
                "stage_peak_rss": sampler.stop(),
            }
        )
    )
    return 0


class StageSampler:
    """VmRSS every 50 ms, the highest per pipeline stage (the progress callback says which is running):
    where the peak is, not only how high."""

    def __init__(self) -> None:
        import threading

        self.current = "start"
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stage(self, stage: str, done: int, total: int) -> None:
        # What runs between two reported stages (colour analysis after the decode; resize, colour back
        # and join after the upscale) counts as "after" the last one.
        self.current = stage if done < total else f"after {stage}"

    def _run(self) -> None:
        # BIGSCAN_STAGE_LOG=FILE: a line every 5 s (stage, RSS, peak so far), for runs too long to finish.
        log = os.environ.get("BIGSCAN_STAGE_LOG")
        ticks = 0
        while not self._done.wait(0.05):
            rss = _vm_rss()
            if rss > self.peaks.get(self.current, 0):
                self.peaks[self.current] = rss
            ticks += 1
            if log and ticks % 100 == 0:
                with open(log, "a") as out:
                    now, peak = time.strftime("%T"), own_peak_rss() >> 20
                    out.write(f"{now} {self.current} rss {rss >> 20} MB peak {peak} MB\n")

    def stop(self) -> dict[str, int]:
        self._done.set()
        self._thread.join()
        return self.peaks


def _vm_rss(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def own_peak_rss() -> int:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a child's
    ru_maxrss through fork/exec (the bench parent that made a 200 MP input showed its 2 GB in every child)."""
    return _vm_rss("VmHWM")


def decode_only(source: Path, scratch: Path) -> int:
    import numpy as np

    from pipeline.imageio import load_image
    from pipeline.restorer import decode_scratch
    from pipeline.scratch import release_rows, row_strips
    from pipeline.types import EngineConfig

    image = load_image(
        source.read_bytes(), 400_000_000, decode_scratch(EngineConfig(scratch_dir=str(scratch)))
    )
    pixels, checksum = image.pixels, 0
    for first, last in row_strips(pixels.shape[0], pixels.strides[0]):
        checksum += int(pixels[first:last].sum(dtype=np.uint64))
        release_rows(pixels, first, last)
    peak = own_peak_rss()
    print(
        json.dumps(
            {"size": [image.width, image.height], "sum": checksum, "notes": image.notes, "peak_rss": peak}
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
