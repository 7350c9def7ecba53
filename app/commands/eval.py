"""`restorer eval HR_DIR`: measured restoration quality on your own high-quality photos.

Each photo is degraded reproducibly (a named degradation and a recorded seed), restored, and compared
with the original (PSNR-Y / SSIM-Y) next to a plain bicubic upscale and the seed project's own
"consistency" measure. Writes results.md, results.csv, crops/, inputs/ and outputs/ under --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from app.flags import ENGINE_FIELDS, command_parser, settings_from_args

if TYPE_CHECKING:
    import numpy as np


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    summary = "measure restoration quality (PSNR-Y/SSIM-Y vs bicubic) on a folder of high-quality photos"
    parser = command_parser(sub, "eval", summary, ENGINE_FIELDS, description=__doc__ or "")
    parser.add_argument("hr_dir", type=Path, metavar="HR_DIR", help="folder of high-quality photos")
    parser.add_argument(
        "--degradation",
        default="bicubic-x4",
        help="bicubic-x4 (default), realistic-x4 (blur+downscale+noise+JPEG) or none (the seed's protocol)",
    )
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    parser.add_argument("--faces", action="store_true", help="run face restoration too (default off)")
    parser.add_argument("--out", type=Path, default=Path("eval-results"), help="output folder")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline import Image, RestoreError, Restorer
    from pipeline.evaluation.degrade import get_degradation
    from pipeline.evaluation.evaluate import Restored, evaluate_images

    if not args.hr_dir.is_dir():
        print(f"restorer eval: {args.hr_dir} is not a folder", file=sys.stderr)
        return 2
    try:
        spec = get_degradation(args.degradation)
    except ValueError as error:
        print(f"restorer eval: {error}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    # The output must land exactly on the original's grid: network scale, no cap, lossless output.
    options = settings.restore_options().replace(
        faces=args.faces, scale=float(spec.scale), max_output_megapixels=None, output_format="png"
    )
    restorer = Restorer(settings.engine_config())
    failures: list[str] = []

    def restore(lr: np.ndarray) -> Restored:
        began = time.perf_counter()
        output, report = restorer.restore(Image(pixels=lr, source_format="png"), options)
        engine = f"{report.model}, {report.backend} {report.device} {report.precision}"
        return Restored(pixels=output.pixels, seconds=time.perf_counter() - began, engine=engine)

    try:
        restorer.warm_up(options)
        run_result = evaluate_images(
            _photos(args.hr_dir, failures), args.degradation, restore, args.out, args.seed, args.faces
        )
    except RestoreError as error:
        print(f"restorer eval: {error}", file=sys.stderr)
        return 1
    print((args.out / "results.md").read_text(encoding="utf-8"))
    print(f"wrote {args.out}/results.md, results.csv, crops/ ({len(run_result.results)} images)")
    for failure in failures:
        print(f"skipped {failure}", file=sys.stderr)
    if not run_result.results:
        print(f"restorer eval: no usable image in {args.hr_dir}", file=sys.stderr)
        return 1
    return 1 if failures else 0


def _photos(folder: Path, failures: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(name, pixels) for every image file in the folder, sorted; unreadable ones recorded, not fatal."""
    from pipeline import INPUT_EXTENSIONS, BadImageError, load_image

    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in INPUT_EXTENSIONS and p.is_file()):
        try:
            image = load_image(path)
        except BadImageError as error:
            failures.append(f"{path.name}: {error}")
            continue
        yield path.name, image.pixels
