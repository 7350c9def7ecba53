"""One restore in this process, for a parent that measures it (benchmarks/bench_bigscan.py, and
tests/test_bigscan_cgroup.py, which runs it inside a memory-limited cgroup).

    python benchmarks/bigscan_child.py INPUT OUTDIR SCRATCH [--network standin|MODEL] [--format F]
        [--in-memory] [--state-dir DIR]

Reads INPUT, restores it 4x without faces through pipeline.restore_bytes (the worker's path), publishes
the result into OUTDIR as the worker does (publish_file / publish_bytes) and prints one JSON line:
output path, size, report notes, and this process's peak RSS. --in-memory forces today's in-memory
assembly for every size (the "before"); --network standin uses the nearest-neighbour stand-in network.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
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
    args = parser.parse_args()

    from daemon.publish import publish_bytes, publish_file
    from daemon.settings import Settings
    from pipeline import RestoreOptions, Restorer, restore_bytes

    if args.in_memory:
        import pipeline.scratch

        pipeline.scratch.IN_MEMORY_MAX_BYTES = 1 << 62
        pipeline.scratch.IN_MEMORY_FRACTION = 1e9
    options = RestoreOptions(faces=False, output_format=args.format)
    if args.network == "standin":
        from pipeline.evaluation.standin import nearest_loader
        from pipeline.types import EngineConfig

        restorer = Restorer(EngineConfig(scratch_dir=str(args.scratch)), upscaler_loader=nearest_loader)
    else:
        settings = Settings.load(state_dir=args.state_dir, model=args.network, faces=False)
        restorer = Restorer(dataclasses.replace(settings.engine_config(), scratch_dir=str(args.scratch)))
        options = options.replace(model=args.network)
    restored = restore_bytes(restorer, args.input.read_bytes(), options, max_pixels=400_000_000)
    name = args.input.stem + restored.extension
    if restored.file is not None:
        with restored.file:
            output = publish_file(restored.file, args.outdir, name, 0o644, None).path
    else:
        output = publish_bytes(restored.data, args.outdir, name, 0o644, None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    report = restored.report
    print(
        json.dumps(
            {
                "output": str(output),
                "size": report.output_size,
                "notes": report.notes,
                "seconds": report.stage_seconds,
                "peak_rss": peak,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
