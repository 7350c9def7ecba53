"""Full-reference image quality metrics, computed the way the super-resolution literature does.

- PSNR and SSIM on the luma (Y) channel of ITU-R BT.601 YCbCr, as in the Real-ESRGAN / BasicSR / EDSR
  evaluation code: Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1], so Y is on the 0..255
  scale (16..235). Not rounded to integers (BasicSR does not round either).
- `scale` pixels are cropped from every border before measuring (the usual "crop border = scale").
- SSIM is Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, mean over
  the valid part of the map.

`seed_consistency` reproduces the seed project's own measure, which is a different thing: it compares the
restored output with a bicubic upscale of the INPUT (not with a ground truth), PSNR over all three 8-bit
channels and scikit-image's default SSIM (7x7 uniform window, sample covariance) on OpenCV's gray
conversion. It says how close the output stays to a bicubic enlargement, not how well it restores.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_Y_WEIGHTS = np.array([65.481, 128.553, 24.966]) / 255.0  # applied to 0..255 values


def as_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 (alpha dropped) -> HxWx3, same dtype. Gray is replicated to RGB."""
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    if channels in (3, 4):
        return image[:, :, :3]
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit view of an 8- or 16-bit image (metrics are defined on the 0..255 scale)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image.astype(np.float64) / 257.0).astype(np.uint8)
    raise ValueError(f"expected uint8 or uint16 pixels, got {image.dtype}")


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma on the 0..255 scale (16..235) as float64, from uint8 RGB (or gray, replicated)."""
    rgb = as_rgb(to_uint8(rgb)).astype(np.float64)
    return 16.0 + rgb @ _Y_WEIGHTS


def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    if border <= 0:
        return image
    if image.shape[0] <= 2 * border or image.shape[1] <= 2 * border:
        raise ValueError(
            f"image {image.shape[1]}x{image.shape[0]} is too small for a {border} px border crop"
        )
    return image[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB between two same-shaped arrays on a 0..data_range scale; inf when identical."""
    _same_shape(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return float("inf")
    return 10.0 * np.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Wang et al. SSIM of two 2-D arrays: 11x11 Gaussian window (sigma 1.5), valid region only."""
    _same_shape(a, b)
    if a.ndim != 2:
        raise ValueError("ssim() takes single-channel 2-D arrays; use ssim_y() for colour images")
    if min(a.shape) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {a.shape[1]}x{a.shape[0]}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    window = cv2.getGaussianKernel(11, 1.5)
    window = window @ window.T

    def local_mean(image: np.ndarray) -> np.ndarray:
        # filter2D then trim 5 px: the "valid" convolution of MATLAB's ssim.m and BasicSR.
        return cv2.filter2D(image, -1, window)[5:-5, 5:-5]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x**2
    var_y = local_mean(y * y) - mu_y**2
    cov_xy = local_mean(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


def psnr_y(reference: np.ndarray, test: np.ndarray, border: int) -> float:
    """PSNR on the BT.601 Y channel after cropping `border` pixels (use border = scale)."""
    return psnr(crop_border(rgb_to_y(reference), border), crop_border(rgb_to_y(test), border))


def ssim_y(reference: np.ndarray, test: np.ndarray, border: int) -> float:
    """SSIM on the BT.601 Y channel after cropping `border` pixels (use border = scale)."""
    return ssim(crop_border(rgb_to_y(reference), border), crop_border(rgb_to_y(test), border))


@dataclass(frozen=True)
class Consistency:
    """The seed project's measure: restored output vs a bicubic upscale of the input."""

    psnr: float  # dB, all three 8-bit channels
    ssim: float  # scikit-image default SSIM on the OpenCV gray conversion


def bicubic_upscale(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV INTER_CUBIC resize, the interpolation the seed used for its comparison."""
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)


def seed_consistency(input_rgb: np.ndarray, output_rgb: np.ndarray) -> Consistency:
    """Reproduce the seed's evaluate.py: bicubic-upscale the input to the output's size with OpenCV, PSNR
    over all channels of the 8-bit images, SSIM (7x7 uniform window, sample covariance, L = 255) on the
    gray conversion. No ground truth is involved."""
    source = as_rgb(to_uint8(input_rgb))
    output = as_rgb(to_uint8(output_rgb))
    upscaled = bicubic_upscale(source, output.shape[1], output.shape[0])
    gray_up = cv2.cvtColor(np.ascontiguousarray(upscaled), cv2.COLOR_RGB2GRAY)
    gray_out = cv2.cvtColor(np.ascontiguousarray(output), cv2.COLOR_RGB2GRAY)
    return Consistency(psnr=psnr(upscaled, output), ssim=_ssim_uniform7(gray_up, gray_out))


def _ssim_uniform7(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """scikit-image's structural_similarity defaults: 7x7 mean filter, unbiased (N-1) covariances,
    3 px border excluded from the mean."""
    _same_shape(a, b)
    if min(a.shape) < 7:
        raise ValueError(f"SSIM needs at least 7x7 pixels, got {a.shape[1]}x{a.shape[0]}")
    x = a.astype(np.float64)
    y = b.astype(np.float64)
    n = 49
    cov_norm = n / (n - 1)

    def local_mean(image: np.ndarray) -> np.ndarray:
        return cv2.blur(image, (7, 7), borderType=cv2.BORDER_REFLECT_101)

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = cov_norm * (local_mean(x * x) - mu_x**2)
    var_y = cov_norm * (local_mean(y * y) - mu_y**2)
    cov_xy = cov_norm * (local_mean(x * y) - mu_x * mu_y)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map[3:-3, 3:-3].mean())


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


# Perceptual / no-reference metrics need learned weights or fitted parameters. We never download at run
# time, so each is reported as available only when its files are already on this machine.
def optional_metric_status() -> dict[str, str]:
    """{"LPIPS": reason, "NIQE": reason}: why each is (not) computed here."""
    return {
        "LPIPS": _lpips_status(),
        "NIQE": "not available offline: the NIQE pristine-model parameters ship with no package this "
        "project installs (basicsr/pyiqa carry or download them; we do not depend on either)",
    }


def _lpips_status() -> str:
    import importlib.util

    if importlib.util.find_spec("lpips") is None:
        return "not available offline: the lpips package is not installed"
    return (
        "not available offline: the lpips package ships only its linear heads; its AlexNet/VGG "
        "backbone weights are downloaded by torchvision at run time"
    )
