"""Black-and-white stays black-and-white: which colour path an RGB photo takes, and putting its tone back.

Most old family photos are black-and-white or toned (sepia, cyanotype, selenium) and most are scanned as
RGB. A face network given such a photo paints skin colour into it, so before anything runs the photo is
measured on a small copy (at most ANALYSIS_EDGE px, area-averaged, then blurred: JPEG and scanner chroma
noise averages out, real colour does not):

    gray    chroma is near zero everywhere (p99.9 <= GRAY_MAX_CHROMA): one luminance channel is restored
            (as a file stored as L is) and written back as RGB with exactly equal channels.
    toned   chroma is low, of nearly one hue, and a function of luminance (a tone curve explains all but
            TONED_MAX_RESIDUAL of it): luminance is restored as gray, then colour is rebuilt from the
            photo's own chroma: tone(Y_out) + the input's residual chroma upsampled (stains, uneven
            toning, paper yellowing kept), so a restored face gets the photo's tone, not the network's.
    colour  anything else: restored in colour exactly as before (the safe default when in doubt).

Colour is measured in full-range BT.601 YCbCr (JPEG's), the space the tone is rebuilt in: Y is the luma
the network restores (OpenCV's RGB2GRAY uses the same weights), so rebuilding keeps Y exactly up to
clipping. The thresholds are 8-bit units of chroma hypot(Cb, Cr); the numbers they were chosen from are in
tests/test_colour.py's docstring. Pure numpy/OpenCV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from pipeline.scratch import is_disk_backed, release_all, release_rows, row_strips
from pipeline.types import ColourMode, ColourReport

ANALYSIS_EDGE = 256  # px, the measured copy's longer side: enough for a photo's colour, milliseconds
ANALYSIS_BLUR = 1.0  # px sigma on the measured copy: per-pixel chroma noise down ~3x, real colour kept
# The toned rebuild's own chroma (tone residual) comes from a copy of at most this many px: a photo of
# that size keeps all its chroma detail, a larger scan has chroma at least as fine as JPEG's 4:2:0 of it.
DETAIL_EDGE = 1024
# p99.9 chroma of gray-as-RGB with per-channel noise (sigma 5) is 1.8-2.1 after JPEG and stays under 3.5
# at 150 px without it; the least coloured test photo (Hubble deep field, mostly black sky) has 28-38.
GRAY_MAX_CHROMA = 6.0
# Toned: sepia, selenium and cyanotype test tones have p99 chroma 15-37 (a deeply saturated synthetic
# cyanotype reaches 54-67 and may go the colour path); colour photos of one hue (retina, coffee): 82-86.
TONED_MAX_CHROMA = 60.0
# What a tone curve cannot explain: 0.7-8.4 on toned test photos (the most on text, from JPEG), 16.9 on
# the ginger cat (chelsea: orange fur and gray background at equal luminance), 14-42 on other colour
# photos but the retina (10: held off by its chroma) and Hubble (5: held off by its hue spread).
TONED_MAX_RESIDUAL = 10.0
# Circular spread of hue weighted by chroma: <= 10 degrees for sepia (clipped highlights turn yellower),
# 29-196 for colour photos with several hues. Split-toned prints go the colour path.
TONED_MAX_HUE_SPREAD = 20.0
TONE_BINS = 32  # luminance bins of the tone curve (8 levels each in 8-bit)
MIN_BIN_PIXELS = 4  # a bin with fewer measured pixels is interpolated from its neighbours
MIN_TONE_PIXELS = 64  # below this, a curve through a few (blurred) pixels would "explain" any colour
STRIP_ROWS = 256  # the toned rebuild works on this many output rows at a time (bounded memory)

# Full-range BT.601 (JPEG): rows give Y, Cb, Cr from R, G, B in [0, 1].
_TO_YCC = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32
)
_FROM_YCC = np.linalg.inv(_TO_YCC).astype(np.float32)


@dataclass(frozen=True)
class ToneMap:
    """The photo's own chroma: Cb/Cr as a function of luma (levels -> cb, cr; [0,1] units) plus what that
    curve leaves, as a small map over the whole picture (h x w x 2) upsampled when colour is rebuilt."""

    levels: np.ndarray
    cb: np.ndarray
    cr: np.ndarray
    residual: np.ndarray


@dataclass(frozen=True)
class ColourPlan:
    """What analyse_colour decided: the report, and the tone to put back on the toned path."""

    report: ColourReport
    tone: ToneMap | None = None

    @property
    def as_gray(self) -> bool:
        """The network restores one luminance channel (gray and toned paths)."""
        return self.report.path != "colour"


def analyse_colour(rgb: np.ndarray, alpha: np.ndarray | None, mode: ColourMode = "auto") -> ColourPlan:
    """Measure an RGB(A) photo (HxWx3 uint8/uint16; alpha HxW or None) and choose its colour path."""
    copies = measured_copies(rgb, alpha)
    if copies is None:
        return ColourPlan(ColourReport("colour", "nothing opaque to measure"))
    plan = _classify(copies.small, copies.small_opaque)
    if mode == "colour" and plan.as_gray:
        measured = plan.report
        reason = f"colour_mode = colour: restored in colour (measured {measured.path}: {measured.reason})"
        return ColourPlan(replace(measured, path="colour", reason=reason))
    if plan.tone is not None:  # the residual the rebuild uses: finer than the one that decided
        plan = replace(plan, tone=with_residual(plan.tone, copies.detail, copies.detail_opaque))
    return plan


@dataclass(frozen=True)
class MeasuredCopies:
    """The photo as float32 YCbCr: `detail` (at most DETAIL_EDGE px, the toned rebuild's chroma) and
    `small` (at most ANALYSIS_EDGE px, blurred: what the path is chosen on), each with its opaque pixels."""

    detail: np.ndarray
    detail_opaque: np.ndarray
    small: np.ndarray
    small_opaque: np.ndarray


def measured_copies(rgb: np.ndarray, alpha: np.ndarray | None) -> MeasuredCopies | None:
    """The two copies the path is chosen and the tone rebuilt from; None when nothing is opaque."""
    detail, opaque = _downsized(rgb, alpha, DETAIL_EDGE)
    if opaque is not None:  # a transparent pixel's colour is arbitrary: made neutral, it cannot bleed in
        detail[opaque < 0.5] = (detail[opaque < 0.5] @ _TO_YCC[0])[:, None]
    small, small_alpha = _downsized(detail, opaque, ANALYSIS_EDGE)
    small = cv2.GaussianBlur(small, (0, 0), ANALYSIS_BLUR)
    small_opaque = np.ones(small.shape[:2], bool) if small_alpha is None else small_alpha >= 0.5
    if not small_opaque.any():
        return None
    detail_opaque = np.ones(detail.shape[:2], bool) if opaque is None else opaque >= 0.5
    return MeasuredCopies(detail @ _TO_YCC.T, detail_opaque, small @ _TO_YCC.T, small_opaque)


def _downsized(
    pixels: np.ndarray, alpha: np.ndarray | None, edge: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 [0,1] copies of at most `edge` px. A huge scan is strided first (never read whole; what is
    left is still 4x the edge, so area-averaging takes 16 pixels or more into each); the area resize runs
    in the input's own integer type, so no float copy of the whole photo is made."""
    height, width = pixels.shape[:2]
    step = max(1, max(height, width) // (4 * edge))
    sample, opaque = _every(pixels, step), None if alpha is None else _every(alpha, step)
    h, w = sample.shape[:2]
    if max(h, w) > edge:
        size = (max(1, round(w * edge / max(h, w))), max(1, round(h * edge / max(h, w))))
        sample = cv2.resize(np.ascontiguousarray(sample), size, interpolation=cv2.INTER_AREA)
        if opaque is not None:
            opaque = cv2.resize(np.ascontiguousarray(opaque), size, interpolation=cv2.INTER_AREA)
    return _unit_float(sample), None if opaque is None else _unit_float(opaque)


def _every(pixels: np.ndarray, step: int) -> np.ndarray:
    """pixels[::step, ::step]; from a disk-backed input (pipeline/disk_decode.py) copied a strip at a
    time, each strip released: the sampled rows span every page of the file (a 100 MP scan: 300 MB)."""
    if step == 1 or not is_disk_backed(pixels):
        return pixels[::step, ::step]
    height = pixels.shape[0]
    sample = np.empty((-(-height // step), *pixels[:1, ::step].shape[1:]), pixels.dtype)
    for first, last in row_strips(height, pixels.strides[0], multiple=step):
        sample[first // step : -(-last // step)] = pixels[first:last:step, ::step]
        release_all(pixels)  # a channel of an RGBA mapping: its rows' pages, not this slice's rows
    return sample


def _unit_float(values: np.ndarray) -> np.ndarray:
    if values.dtype == np.float32:
        return values.copy()
    return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)


def _classify(ycc: np.ndarray, weight: np.ndarray) -> ColourPlan:
    y, cb, cr = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    chroma = np.hypot(cb, cr)[weight] * 255.0
    p99, p999 = (float(v) for v in np.percentile(chroma, [99.0, 99.9]))
    if p999 <= GRAY_MAX_CHROMA:
        reason = f"near-gray: chroma p99.9 {p999:.1f} <= {GRAY_MAX_CHROMA:g}"
        return ColourPlan(ColourReport("gray", reason, round(p99, 2), round(p999, 2)))
    tone = fit_tone(y, cb, cr, weight)
    if tone is None:
        reason = f"colour: too few pixels to tell a tone (fewer than {MIN_TONE_PIXELS})"
        return ColourPlan(ColourReport("colour", reason, round(p99, 2), round(p999, 2)))
    residual = np.hypot(*np.moveaxis(tone.residual, -1, 0))[weight] * 255.0
    residual_p95 = float(np.percentile(residual, 95.0))
    hue, spread = _hue_and_spread(cb[weight], cr[weight])
    numbers = (round(p99, 2), round(p999, 2), round(residual_p95, 2), round(hue, 1), round(spread, 1))
    toned = p99 <= TONED_MAX_CHROMA and residual_p95 <= TONED_MAX_RESIDUAL and spread <= TONED_MAX_HUE_SPREAD
    if toned:
        reason = (
            f"toned: chroma p99 {p99:.1f} <= {TONED_MAX_CHROMA:g}, hue spread {spread:.1f} <= "
            f"{TONED_MAX_HUE_SPREAD:g} deg, tone residual p95 {residual_p95:.1f} <= {TONED_MAX_RESIDUAL:g}"
        )
        return ColourPlan(ColourReport("toned", reason, *numbers), tone)
    reason = (
        f"colour: chroma p99 {p99:.1f}, hue spread {spread:.1f} deg, tone residual p95 {residual_p95:.1f} "
        f"(toned needs <= {TONED_MAX_CHROMA:g}, {TONED_MAX_HUE_SPREAD:g}, {TONED_MAX_RESIDUAL:g})"
    )
    return ColourPlan(ColourReport("colour", reason, *numbers))


def fit_tone(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, weight: np.ndarray) -> ToneMap | None:
    """Chroma as a function of luma: the mean Cb/Cr of each luma bin (at the bin's mean luma), linear in
    between and constant beyond; with the residual (what is left) at each measured pixel (0 where not).
    None with fewer than MIN_TONE_PIXELS measured pixels or no bin of MIN_BIN_PIXELS."""
    if int(weight.sum()) < MIN_TONE_PIXELS:
        return None
    bins = np.clip((y[weight] * TONE_BINS).astype(np.int64), 0, TONE_BINS - 1)
    count = np.bincount(bins, minlength=TONE_BINS)
    used = count >= MIN_BIN_PIXELS
    if not used.any():
        return None
    mean = [np.bincount(bins, v[weight], TONE_BINS)[used] / count[used] for v in (y, cb, cr)]
    levels, curve_cb, curve_cr = (m.astype(np.float32) for m in mean)
    curve = ToneMap(levels, curve_cb, curve_cr, np.zeros((1, 1, 2), np.float32))
    return with_residual(curve, np.dstack([y, cb, cr]), weight)


def with_residual(tone: ToneMap, ycc: np.ndarray, opaque: np.ndarray) -> ToneMap:
    """`tone` with its residual measured on `ycc` (h x w x 3 float32 YCbCr): chroma less tone(Y)."""
    y = ycc[..., 0]
    residual = ycc[..., 1:] - np.dstack(
        [np.interp(y, tone.levels, tone.cb), np.interp(y, tone.levels, tone.cr)]
    )
    residual[~opaque] = 0.0
    return replace(tone, residual=residual.astype(np.float32))


def _hue_and_spread(cb: np.ndarray, cr: np.ndarray) -> tuple[float, float]:
    """Mean hue angle and circular spread (degrees) of the chroma vectors, each weighted by its length."""
    total = float(np.hypot(cb, cr).sum())
    resultant = math.hypot(float(cb.sum()), float(cr.sum()))
    if total <= 0.0 or resultant <= 0.0:
        return 0.0, 180.0
    concentration = min(1.0, resultant / total)
    spread = math.degrees(math.sqrt(-2.0 * math.log(max(concentration, 1e-12))))
    return math.degrees(math.atan2(float(cr.sum()), float(cb.sum()))), spread


# -- the network's input and the output's colour -------------------------------------------------------------


def luma(pixels: np.ndarray) -> np.ndarray:
    """HxW luma (BT.601, the analysis' Y) of HxWx3 RGB or HxWx4 RGBA, in the input dtype."""
    code = cv2.COLOR_RGBA2GRAY if pixels.shape[2] == 4 else cv2.COLOR_RGB2GRAY
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


def gray_to_rgb(gray: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """The gray path's output: HxW -> HxWx3 with exactly equal channels (into `out`, a strip at a time,
    when given: a disk-backed output, pipeline/scratch.py)."""
    if out is None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    for top in range(0, gray.shape[0], STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, gray.shape[0])
        out[top:bottom] = gray[top:bottom, :, None]
        release_rows(out, top, bottom)
        release_rows(gray, top, bottom)
    return out


def toned_to_rgb(gray: np.ndarray, tone: ToneMap, out: np.ndarray | None = None) -> np.ndarray:
    """The toned path's output: restored luma (HxW uint8/uint16) + the photo's own chroma -> HxWx3.

    Chroma = tone(Y_out) + the residual map upsampled (bilinear: chroma is smooth, and the photo's own).
    YCbCr -> RGB is linear, so the tone becomes one RGB table indexed by the output's gray value and the
    residual an RGB offset map; STRIP_ROWS output rows at a time, so a large output has no whole float
    copy."""
    peak = int(np.iinfo(gray.dtype).max)
    values = np.arange(peak + 1, dtype=np.float32) / peak
    curve = np.stack(
        [values, np.interp(values, tone.levels, tone.cb), np.interp(values, tone.levels, tone.cr)]
    )
    table = (curve.T.astype(np.float32) @ _FROM_YCC.T) * np.float32(peak)  # gray value -> R, G, B
    offsets = (tone.residual @ _FROM_YCC[:, 1:].T) * np.float32(peak)  # small map of R, G, B offsets
    output = np.empty((*gray.shape, 3), gray.dtype) if out is None else out
    for top in range(0, gray.shape[0], STRIP_ROWS):
        bottom = min(top + STRIP_ROWS, gray.shape[0])
        rgb = np.take(table, gray[top:bottom], axis=0)  # much faster than table[gray] for 2-D indices
        rgb += residual_rows(offsets, top, bottom, gray.shape)
        np.rint(rgb, out=rgb)
        output[top:bottom] = np.clip(rgb, 0, peak, out=rgb)
        release_rows(output, top, bottom)  # a disk-backed output (pipeline/scratch.py) leaves memory
        release_rows(gray, top, bottom)
    return output


def residual_rows(residual: np.ndarray, top: int, bottom: int, shape: tuple[int, ...]) -> np.ndarray:
    """Rows top..bottom of the map `residual` (h x w x C float32) bilinearly resized to `shape`, pixel
    centres aligned as cv2.resize aligns them, made from only the few map rows they fall between."""
    height, width = shape[:2]
    rows, channels = residual.shape[0], residual.shape[2]
    source = np.clip((np.arange(top, bottom, dtype=np.float32) + 0.5) * (rows / height) - 0.5, 0, rows - 1)
    first = np.floor(source).astype(np.int64)
    second = np.minimum(first + 1, rows - 1)
    band = residual[first[0] : second[-1] + 1]
    band = cv2.resize(band, (width, band.shape[0]), interpolation=cv2.INTER_LINEAR)
    band = band.reshape(-1, width, channels)  # cv2 drops a single channel's axis
    upper, lower = band[first - first[0]], band[second - first[0]]
    lower -= upper
    lower *= (source - first)[:, None, None]
    upper += lower
    return upper
