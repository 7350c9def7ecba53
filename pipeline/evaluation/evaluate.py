"""The evaluation run behind `restorer eval`: degrade each high-quality photo, restore it, measure.

For every image: a named degradation (recorded seed) makes the low-resolution input; the restorer and a
plain bicubic upscale both bring it back to the original size; PSNR-Y / SSIM-Y of each against the
original are reported side by side, with the seed project's own consistency measure for comparison.
Writes results.md (Markdown table with the method), results.csv, crops/ (side-by-side panels),
inputs/ (the degraded inputs) and outputs/ (the restored images).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

from pipeline.evaluation import metrics
from pipeline.evaluation.degrade import Degraded, degrade, get_degradation


@dataclass(frozen=True)
class Restored:
    """What the restorer under test returns for one degraded input."""

    pixels: np.ndarray  # HxWx3 uint8 RGB, the degraded input's size x scale
    seconds: float
    engine: str  # e.g. "RealESRGAN_x4plus, openvino cpu bf16"


RestoreFn = Callable[[np.ndarray], Restored]


@dataclass
class ImageResult:
    name: str
    seed: int
    params: str
    lr_size: tuple[int, int]  # width, height
    out_size: tuple[int, int]
    psnr_y: float | None  # None when the degradation has no ground truth
    ssim_y: float | None
    bicubic_psnr_y: float | None
    bicubic_ssim_y: float | None
    consistency: metrics.Consistency
    seconds: float
    engine: str


@dataclass
class EvalRun:
    degradation: str
    base_seed: int
    faces: bool
    results: list[ImageResult] = field(default_factory=list)
    optional_metrics: dict[str, str] = field(default_factory=metrics.optional_metric_status)

    @property
    def engines(self) -> list[str]:
        return sorted({result.engine for result in self.results})


def bicubic_baseline(lr: np.ndarray, scale: int) -> np.ndarray:
    """The SR literature's bicubic baseline (Pillow BICUBIC, a = -0.5 like MATLAB's imresize)."""
    size = (lr.shape[1] * scale, lr.shape[0] * scale)
    return np.asarray(PILImage.fromarray(lr).resize(size, PILImage.Resampling.BICUBIC))


def evaluate_images(
    images: Iterable[tuple[str, np.ndarray]],
    degradation: str,
    restore: RestoreFn,
    out_dir: Path,
    base_seed: int = 0,
    faces: bool = False,
) -> EvalRun:
    """Run the evaluation over (name, pixels) pairs and write every artefact under out_dir."""
    get_degradation(degradation)  # fail before any work on an unknown name
    run = EvalRun(degradation=degradation, base_seed=base_seed, faces=faces)
    for folder in ("crops", "inputs", "outputs"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    for name, pixels in images:
        sample = degrade(pixels, degradation, base_seed, name)
        restored = restore(sample.lr)
        expected = (sample.lr.shape[0] * sample.scale, sample.lr.shape[1] * sample.scale)
        if restored.pixels.shape[:2] != expected:
            raise ValueError(
                f"{name}: restorer returned {restored.pixels.shape[1]}x{restored.pixels.shape[0]}, "
                f"expected {expected[1]}x{expected[0]} (scale {sample.scale})"
            )
        output = metrics.as_rgb(metrics.to_uint8(restored.pixels))
        bicubic = bicubic_baseline(sample.lr, sample.scale)
        run.results.append(_measure(name, sample, output, bicubic, restored))
        stem = Path(name).stem
        _save_png(out_dir / "inputs" / f"{stem}.png", sample.lr)
        _save_png(out_dir / "outputs" / f"{stem}.png", output)
        _save_png(out_dir / "crops" / f"{stem}.png", side_by_side(sample, bicubic, output))
    write_csv(run, out_dir / "results.csv")
    (out_dir / "results.md").write_text(markdown_report(run), encoding="utf-8")
    return run


def _measure(
    name: str, sample: Degraded, output: np.ndarray, bicubic: np.ndarray, restored: Restored
) -> ImageResult:
    border = sample.scale
    truth = sample.hr
    return ImageResult(
        name=name,
        seed=sample.seed,
        params=sample.describe(),
        lr_size=(sample.lr.shape[1], sample.lr.shape[0]),
        out_size=(output.shape[1], output.shape[0]),
        psnr_y=metrics.psnr_y(truth, output, border) if truth is not None else None,
        ssim_y=metrics.ssim_y(truth, output, border) if truth is not None else None,
        bicubic_psnr_y=metrics.psnr_y(truth, bicubic, border) if truth is not None else None,
        bicubic_ssim_y=metrics.ssim_y(truth, bicubic, border) if truth is not None else None,
        consistency=metrics.seed_consistency(sample.lr, output),
        seconds=restored.seconds,
        engine=restored.engine,
    )


# --- crops ----------------------------------------------------------------------------------------------


def detail_window(reference: np.ndarray, size: int) -> tuple[int, int, int]:
    """(top, left, edge) of the size x size window with the most edge energy: where methods differ."""
    edge = min(size, reference.shape[0], reference.shape[1])
    gray = cv2.cvtColor(np.ascontiguousarray(reference), cv2.COLOR_RGB2GRAY).astype(np.float32)
    energy = np.abs(cv2.Sobel(gray, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    window_sum = cv2.boxFilter(energy, -1, (edge, edge), normalize=False, anchor=(0, 0))
    valid = window_sum[: gray.shape[0] - edge + 1, : gray.shape[1] - edge + 1]
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left), edge


def side_by_side(sample: Degraded, bicubic: np.ndarray, output: np.ndarray, size: int = 160) -> np.ndarray:
    """One PNG: input (nearest-neighbour enlarged) | bicubic | restored | original, same detail crop."""
    nearest = cv2.resize(sample.lr, (output.shape[1], output.shape[0]), interpolation=cv2.INTER_NEAREST)
    panels = [("input", nearest), ("bicubic", bicubic), ("restored", output)]
    if sample.hr is not None:
        panels.append(("original", sample.hr))
    top, left, edge = detail_window(sample.hr if sample.hr is not None else output, size)
    labelled = [_label(image[top : top + edge, left : left + edge], text) for text, image in panels]
    gap = np.full((labelled[0].shape[0], 4, 3), 255, dtype=np.uint8)
    row: list[np.ndarray] = []
    for panel in labelled:
        row += [panel, gap]
    return np.concatenate(row[:-1], axis=1)


def _label(crop: np.ndarray, text: str) -> np.ndarray:
    bar = PILImage.new("RGB", (crop.shape[1], 16), "white")
    ImageDraw.Draw(bar).text((3, 2), text, fill="black", font=ImageFont.load_default())
    return np.concatenate([np.asarray(bar), crop], axis=0)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    PILImage.fromarray(np.ascontiguousarray(pixels)).save(path, format="PNG")


# --- reports --------------------------------------------------------------------------------------------

CSV_FIELDS = [
    "image",
    "degradation",
    "seed",
    "params",
    "lr_width",
    "lr_height",
    "out_width",
    "out_height",
    "psnr_y",
    "ssim_y",
    "bicubic_psnr_y",
    "bicubic_ssim_y",
    "seed_consistency_psnr",
    "seed_consistency_ssim",
    "lpips",
    "niqe",
    "seconds",
    "engine",
]


def write_csv(run: EvalRun, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for r in run.results:
            writer.writerow(
                {
                    "image": r.name,
                    "degradation": run.degradation,
                    "seed": r.seed,
                    "params": r.params,
                    "lr_width": r.lr_size[0],
                    "lr_height": r.lr_size[1],
                    "out_width": r.out_size[0],
                    "out_height": r.out_size[1],
                    "psnr_y": _num(r.psnr_y, 4),
                    "ssim_y": _num(r.ssim_y, 6),
                    "bicubic_psnr_y": _num(r.bicubic_psnr_y, 4),
                    "bicubic_ssim_y": _num(r.bicubic_ssim_y, 6),
                    "seed_consistency_psnr": _num(r.consistency.psnr, 4),
                    "seed_consistency_ssim": _num(r.consistency.ssim, 6),
                    "lpips": "not available offline",
                    "niqe": "not available offline",
                    "seconds": f"{r.seconds:.3f}",
                    "engine": r.engine,
                }
            )


def markdown_report(run: EvalRun) -> str:
    spec = get_degradation(run.degradation)
    has_truth = any(r.psnr_y is not None for r in run.results)
    lines = [
        f"Degradation `{spec.name}`: {spec.description}; base seed {run.base_seed} (per-image seed and "
        "parameters in results.csv).",
        f"Restorer: {', '.join(run.engines) or '-'}; faces {'on' if run.faces else 'off'}.",
        "",
    ]
    header = ["image", "LR -> output"]
    if has_truth:
        header += ["PSNR-Y ours", "SSIM-Y ours", "PSNR-Y bicubic", "SSIM-Y bicubic"]
    header += ["seed-method PSNR", "seed-method SSIM", "LPIPS", "NIQE", "s"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in run.results:
        cells = [r.name, f"{r.lr_size[0]}x{r.lr_size[1]} -> {r.out_size[0]}x{r.out_size[1]}"]
        if has_truth:
            cells += [
                _num(r.psnr_y, 2),
                _num(r.ssim_y, 4),
                _num(r.bicubic_psnr_y, 2),
                _num(r.bicubic_ssim_y, 4),
            ]
        cells += [_num(r.consistency.psnr, 2), _num(r.consistency.ssim, 4), "n/a", "n/a", f"{r.seconds:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if len(run.results) > 1:
        lines.append("| " + " | ".join(_mean_row(run, has_truth)) + " |")
    lines += ["", *method_notes(run)]
    return "\n".join(lines) + "\n"


def _mean_row(run: EvalRun, has_truth: bool) -> list[str]:
    def mean(values: Iterable[float | None], digits: int) -> str:
        finite = [v for v in values if v is not None and math.isfinite(v)]
        return f"**{sum(finite) / len(finite):.{digits}f}**" if finite else "n/a"

    rs = run.results
    cells = ["**mean**", ""]
    if has_truth:
        cells += [
            mean((r.psnr_y for r in rs), 2),
            mean((r.ssim_y for r in rs), 4),
            mean((r.bicubic_psnr_y for r in rs), 2),
            mean((r.bicubic_ssim_y for r in rs), 4),
        ]
    cells += [
        mean((r.consistency.psnr for r in rs), 2),
        mean((r.consistency.ssim for r in rs), 4),
        "n/a",
        "n/a",
        mean((r.seconds for r in rs), 1),
    ]
    return cells


def method_notes(run: EvalRun) -> list[str]:
    notes = [
        "Method:",
        "- PSNR-Y / SSIM-Y: against the original photo, on the BT.601 Y channel "
        "(Y = 16 + 65.481 R + 128.553 G + 24.966 B, RGB in [0, 1]), border of `scale` px cropped; SSIM with "
        "an 11x11 Gaussian window (sigma 1.5), as in the super-resolution literature.",
        "- bicubic: the degraded input enlarged with Pillow's bicubic (a = -0.5, as MATLAB imresize).",
        "- seed-method PSNR / SSIM: the seed project's own measure, reproduced: the output against an "
        "OpenCV bicubic upscale of the INPUT (no ground truth), PSNR over the three 8-bit channels, "
        "scikit-image default SSIM (7x7 window) on the gray image. It rewards staying close to a bicubic "
        "enlargement, not restoring detail.",
    ]
    notes += [f"- {name}: {reason}." for name, reason in run.optional_metrics.items()]
    notes.append(
        "- s: seconds of the restore call, model loaded; the first image of a size smaller than the tile "
        "also pays for compiling that network shape (cached on disk afterwards)."
    )
    return notes


def _num(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"
