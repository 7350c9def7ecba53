"""Colour paths (pipeline/colour.py): which path real photos take, and what measuring and rebuilding cost.

    python benchmarks/bench_colour.py paths     the measured numbers and the chosen path of skimage's
        colour photos (as is, JPEG q70, 160 px), of gray photos stored as RGB (sensor noise, JPEG) and of
        toned prints made from them (sepia, cyanotype, selenium, the photo-app sepia matrix)
    python benchmarks/bench_colour.py cost      CPU seconds (time.process_time: steady on a shared machine)
        to measure a 6 MP photo and to rebuild a toned 24 MP output, 8- and 16-bit

Both print a Markdown table for docs/performance.md ("## Colour paths").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import skimage.data

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.colour import analyse_colour, gray_to_rgb, luma, toned_to_rgb  # noqa: E402
from tests.colour_cases import TONES, gray_as_rgb, jpeg, sepia_matrix, toned  # noqa: E402

COLOUR = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
GRAY = ("camera", "coins", "page", "moon")


def cases() -> list[tuple[str, np.ndarray]]:
    photos: list[tuple[str, np.ndarray]] = []
    for name in COLOUR:
        rgb = getattr(skimage.data, name)()
        small = cv2.resize(rgb, (160, round(rgb.shape[0] * 160 / rgb.shape[1])), interpolation=cv2.INTER_AREA)
        photos += [(name, rgb), (f"{name} jpeg q70", jpeg(rgb, 70)), (f"{name} 160 px", small)]
    for name in GRAY:
        gray = getattr(skimage.data, name)()
        photos.append((f"{name} gray as RGB, noise 5, jpeg q85", jpeg(gray_as_rgb(gray, 5.0), 85)))
        photos += [(f"{name} {tone} jpeg q85", jpeg(toned(gray, *TONES[tone]), 85)) for tone in sorted(TONES)]
        photos.append((f"{name} sepia matrix jpeg q80", jpeg(sepia_matrix(gray), 80)))
    return photos


def paths() -> None:
    print("| photo | path | chroma p99 | p99.9 | hue spread (deg) | tone residual p95 |")
    print("|---|---|---:|---:|---:|---:|")
    for name, rgb in cases():
        report = analyse_colour(rgb, None).report
        values = [report.chroma_p99, report.chroma_p999, report.hue_spread_degrees, report.tone_residual_p95]
        cells = " | ".join("" if v is None else f"{v:g}" for v in values)
        print(f"| {name} | {report.path} | {cells} |")


def cpu_seconds(step) -> float:
    started = time.process_time()
    step()
    return time.process_time() - started


def cost() -> None:
    gray = cv2.resize(skimage.data.camera(), (3000, 2000), interpolation=cv2.INTER_CUBIC)
    sepia = toned(gray, *TONES["sepia"])
    colour = cv2.resize(skimage.data.astronaut(), (3000, 2000), interpolation=cv2.INTER_CUBIC)
    print("| step | CPU s |")
    print("|---|---:|")
    for name, rgb in (("sepia", sepia), ("colour", colour), ("gray", gray_to_rgb(gray))):
        seconds = cpu_seconds(lambda rgb=rgb: analyse_colour(rgb, None))
        print(f"| measure a 3000x2000 {name} photo | {seconds:.3f} |")
    print(f"| luma + replicate, 3000x2000 | {cpu_seconds(lambda: gray_to_rgb(luma(sepia))):.3f} |")
    tone = analyse_colour(sepia, None).tone
    assert tone is not None
    restored = cv2.resize(luma(sepia), (6000, 4000), interpolation=cv2.INTER_CUBIC)
    for bits, values in ((8, restored), (16, restored.astype(np.uint16) * 257)):
        seconds = cpu_seconds(lambda v=values: toned_to_rgb(v, tone))
        print(f"| toned rebuild, 6000x4000 {bits}-bit | {seconds:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=("paths", "cost"))
    {"paths": paths, "cost": cost}[parser.parse_args().what]()


if __name__ == "__main__":
    main()
