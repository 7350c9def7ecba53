"""Named degradations that turn a high-quality photo into a low-resolution test input, reproducibly.

Every random choice comes from a numpy Generator seeded per image (the run's seed mixed with the image's
name), and every choice is recorded in `Degraded.params`, so a table row can be regenerated bit for bit:

    bicubic-x4    the classic SR benchmark input: crop to a multiple of 4, antialiased bicubic /4
                  (Pillow's BICUBIC, which widens the kernel when shrinking, as MATLAB's imresize does).
                  Deterministic; the seed is recorded but unused.
    realistic-x4  a camera-like chain: Gaussian blur (sigma 0.4-2.0 HR px) -> bicubic /4 -> Gaussian
                  noise (sigma 1-8 on the 0..255 scale) -> JPEG (quality 40-90).
    none          no degradation and no ground truth: the photo itself is the input, as in the seed's own
                  evaluation. Only the seed's consistency measure can be computed.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image as PILImage

from pipeline.evaluation.metrics import as_rgb, to_uint8

Params = dict[str, float | int | str]


@dataclass(frozen=True)
class Degraded:
    """One synthesised test input and its ground truth."""

    name: str  # the degradation's name
    seed: int  # the per-image seed actually used
    lr: np.ndarray  # HxWx3 uint8 RGB: what the restorer gets
    hr: np.ndarray | None  # (H*scale)x(W*scale)x3 uint8 RGB ground truth; None for "none"
    scale: int
    params: Params = field(default_factory=dict)

    def describe(self) -> str:
        """The recorded parameters on one line, e.g. 'blur_sigma=1.21 noise_sigma=3.4 jpeg_quality=71'."""
        return " ".join(f"{key}={_fmt(value)}" for key, value in self.params.items())


@dataclass(frozen=True)
class Degradation:
    name: str
    scale: int
    description: str
    apply: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray | None, Params]]


def image_seed(base_seed: int, image_name: str) -> int:
    """Per-image seed: adding or removing other images never changes this image's degradation."""
    return (base_seed * 1_000_003 + zlib.crc32(image_name.encode("utf-8"))) % (2**32)


def degrade(hr: np.ndarray, degradation: str, base_seed: int, image_name: str) -> Degraded:
    """Apply a named degradation to an 8- or 16-bit, gray/RGB/RGBA image (alpha dropped, gray -> RGB)."""
    spec = get_degradation(degradation)
    seed = image_seed(base_seed, image_name)
    rgb = np.ascontiguousarray(as_rgb(to_uint8(hr)))
    lr, ground_truth, params = spec.apply(rgb, np.random.default_rng(seed))
    return Degraded(name=spec.name, seed=seed, lr=lr, hr=ground_truth, scale=spec.scale, params=params)


def get_degradation(name: str) -> Degradation:
    try:
        return DEGRADATIONS[name]
    except KeyError:
        known = ", ".join(DEGRADATIONS)
        raise ValueError(f"unknown degradation {name!r}; known: {known}") from None


def modcrop(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Crop bottom/right so both sides are multiples of `scale` (the LR grid then maps exactly)."""
    height = rgb.shape[0] - rgb.shape[0] % scale
    width = rgb.shape[1] - rgb.shape[1] % scale
    if height == 0 or width == 0:
        raise ValueError(f"image {rgb.shape[1]}x{rgb.shape[0]} is smaller than the scale {scale}")
    return rgb[:height, :width]


def bicubic_downscale(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Antialiased bicubic reduction by an integer factor (Pillow BICUBIC, support widened by `scale`)."""
    height, width = rgb.shape[0] // scale, rgb.shape[1] // scale
    reduced = PILImage.fromarray(rgb).resize((width, height), PILImage.Resampling.BICUBIC)
    return np.asarray(reduced)


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    return cv2.GaussianBlur(rgb, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma, sigmaY=sigma)


def add_gaussian_noise(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = rgb.astype(np.float64) + rng.normal(0.0, sigma, size=rgb.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    with PILImage.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _bicubic_x4(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Params]:
    hr = modcrop(rgb, 4)
    return bicubic_downscale(hr, 4), hr, {"downscale": "bicubic-antialiased/4"}


def _realistic_x4(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, Params]:
    hr = modcrop(rgb, 4)
    # Draw the parameters first, in a fixed order, then the noise: the seed alone reproduces the output.
    blur_sigma = float(rng.uniform(0.4, 2.0))
    noise_sigma = float(rng.uniform(1.0, 8.0))
    jpeg_quality = int(rng.integers(40, 91))
    lr = bicubic_downscale(gaussian_blur(hr, blur_sigma), 4)
    lr = add_gaussian_noise(lr, noise_sigma, rng)
    lr = jpeg_roundtrip(lr, jpeg_quality)
    params: Params = {
        "blur_sigma": round(blur_sigma, 4),
        "downscale": "bicubic-antialiased/4",
        "noise_sigma": round(noise_sigma, 4),
        "jpeg_quality": jpeg_quality,
    }
    return lr, hr, params


def _none(rgb: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, None, Params]:
    return rgb, None, {"input": "the photo itself (no ground truth)"}


DEGRADATIONS: dict[str, Degradation] = {
    spec.name: spec
    for spec in (
        Degradation(
            "bicubic-x4", 4, "antialiased bicubic downscale by 4 (classic SR benchmark)", _bicubic_x4
        ),
        Degradation(
            "realistic-x4",
            4,
            "Gaussian blur σ 0.4-2.0 -> bicubic /4 -> Gaussian noise σ 1-8 (0..255) -> JPEG q 40-90",
            _realistic_x4,
        ),
        Degradation("none", 4, "no degradation, no ground truth: the seed's own protocol", _none),
    )
}


def _fmt(value: float | int | str) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
