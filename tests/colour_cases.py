"""Photos for the colour-path tests: gray stored as RGB the way scanners and phones store it (per-channel
sensor noise, then JPEG), toned prints (sepia, cyanotype, selenium) made from real gray photos, and how
to measure hue (CIE Lab, skimage's implementation: independent of the YCbCr the pipeline measures in)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image as PILImage
from skimage.color import rgb2lab

# Lab hue angles (degrees) and mid-tone chroma of the tones: warm brown, Prussian blue, purple-brown.
TONES = {"sepia": (70.0, 22.0), "cyanotype": (-100.0, 25.0), "selenium": (20.0, 12.0)}


def jpeg(rgb: np.ndarray, quality: int = 85) -> np.ndarray:
    """Through a JPEG file (4:2:0 chroma, as cameras and most scanners write) and back."""
    buffer = io.BytesIO()
    PILImage.fromarray(rgb).save(buffer, "JPEG", quality=quality)
    return np.asarray(PILImage.open(buffer).convert("RGB"))


def gray_as_rgb(gray: np.ndarray, noise: float = 4.0, seed: int = 0) -> np.ndarray:
    """8-bit gray stored as RGB with independent noise per channel (a colour sensor scanning a print)."""
    rng = np.random.default_rng(seed)
    rgb = gray[:, :, None].astype(np.float32) + rng.normal(0.0, noise, (*gray.shape, 3))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def toned(gray: np.ndarray, hue: float, chroma: float) -> np.ndarray:
    """A toned print of `gray`: Lab L from the gray, chroma `chroma` in the mid-tones falling to 0 at paper
    white and full black, one hue throughout (as silver toned to sepia or selenium, or a cyanotype)."""
    lightness = cv2.cvtColor(np.repeat(gray[:, :, None], 3, axis=2), cv2.COLOR_RGB2Lab)[..., 0] / 255 * 100
    lightness = lightness.astype(np.float32)
    c = chroma * 4.0 * (lightness / 100.0) * (1.0 - lightness / 100.0)
    a, b = c * np.cos(np.radians(hue)), c * np.sin(np.radians(hue))
    rgb = cv2.cvtColor(np.dstack([lightness, a, b]).astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)


def sepia_matrix(gray: np.ndarray) -> np.ndarray:
    """The sepia filter photo apps apply (the classic 3x3 matrix on a gray image; highlights clip yellow)."""
    g = gray.astype(np.float32)
    return np.clip(np.rint(np.dstack([g * 1.351, g * 1.203, g * 0.937])), 0, 255).astype(np.uint8)


def lab_hue(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel Lab hue angle (degrees) and chroma of an 8- or 16-bit RGB image."""
    lab = rgb2lab(rgb.astype(np.float64) / np.iinfo(rgb.dtype).max)
    return np.degrees(np.arctan2(lab[..., 2], lab[..., 1])), np.hypot(lab[..., 1], lab[..., 2])


def hue_differences(reference: np.ndarray, result: np.ndarray, min_chroma: float = 5.0) -> np.ndarray:
    """|hue difference| in degrees per pixel where both have a hue (Lab chroma >= min_chroma)."""
    hue_a, chroma_a = lab_hue(reference)
    hue_b, chroma_b = lab_hue(result)
    both = (chroma_a >= min_chroma) & (chroma_b >= min_chroma)
    difference = np.abs((hue_b - hue_a + 180.0) % 360.0 - 180.0)
    return difference[both]


def mean_hue(rgb: np.ndarray) -> float:
    """The chroma-weighted mean Lab hue (degrees) of an image or region."""
    lab = rgb2lab(rgb.astype(np.float64) / np.iinfo(rgb.dtype).max)
    return float(np.degrees(np.arctan2(lab[..., 2].sum(), lab[..., 1].sum())))


def hue_gap(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)
