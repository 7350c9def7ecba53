"""How far the default output is from the untiled fp32 output of the same network: the bar for tiling and
reduced precision (>= 45 dB at default settings; docs/performance.md).

The reference is the same Restorer flow (gray, alpha, 16-bit handled the same way) with the network in
torch fp32 on each whole plane in one call, never cut into tiles. The default is whatever the engine
picks here (OpenVINO bf16 on a CPU with bf16 dot products) with its own tiles. Both skip faces: without
face weights they change no pixel, and with them the comparison would be about the face network.

    fidelity = compare(default_output.pixels, reference_output.pixels)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer
from pipeline.tiling import plan_axis
from pipeline.types import EngineConfig

UNTILED = 1 << 20  # a tile edge larger than any image: the tiler sends the whole plane at once


@dataclass(frozen=True)
class Fidelity:
    psnr_db: float  # over every channel, on the output's own scale (8- or 16-bit)
    max_diff: float  # the largest difference of one sample, in 8-bit levels (/255)
    max_diff_on_seams: float  # the same, on output pixels where tiles were cross-faded (0 when none)


class UntiledUpscaler:
    """Wraps an upscaler so the tiler hands it the whole image (for the reference only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.scale: int = inner.scale
        self.info = inner.info
        self.batch_size = 1
        self.size_multiple: int = int(getattr(inner, "size_multiple", 1))

    def warm_up(self) -> None:
        self.inner.warm_up()

    def suggest_tile(self) -> int:
        return UNTILED

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.inner(batch)


def reference_restorer(engine: EngineConfig) -> Restorer:
    """torch fp32 on whole planes, with the engine's weights and cache folders."""
    from pipeline.backends import load_upscaler

    fp32 = replace(engine, backend="torch", device="cpu", precision="fp32", tile=None)

    def loader(model_id: str, _engine: EngineConfig, denoise: float | None) -> UntiledUpscaler:
        return UntiledUpscaler(load_upscaler(model_id, fp32, denoise))

    return Restorer(fp32, upscaler_loader=loader)


def options_for_fidelity(options: RestoreOptions) -> RestoreOptions:
    """The network's own scale and no faces: only tiling and precision differ between the two sides."""
    return options.replace(faces=False, scale=4.0, max_output_megapixels=None)


def compare(test: np.ndarray, reference: np.ndarray, seams: np.ndarray | None = None) -> Fidelity:
    """PSNR and largest differences of two outputs of the same shape and integer dtype."""
    if test.shape != reference.shape or test.dtype != reference.dtype:
        raise ValueError(f"outputs differ: {test.shape} {test.dtype} vs {reference.shape} {reference.dtype}")
    peak = float(np.iinfo(test.dtype).max)
    difference = np.abs(test.astype(np.float64) - reference.astype(np.float64))
    mse = float((difference**2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)
    to_8bit = 255.0 / peak
    on_seams = 0.0
    if seams is not None and seams.any():
        planar = difference if difference.ndim == 2 else difference.max(axis=2)
        on_seams = float(planar[seams].max()) * to_8bit
    return Fidelity(round(psnr, 2), float(difference.max()) * to_8bit, on_seams)


def seam_mask(height: int, width: int, tile: int, pad: int, blend: int, scale: int) -> np.ndarray:
    """Output pixels where neighbouring tile windows are cross-faded (weight strictly between 0 and 1),
    for an input of height x width cut the way upscale_tiled cuts it."""

    def joined(size: int) -> np.ndarray:
        axis = plan_axis(size, tile, pad, blend, scale)
        mask = np.zeros(size * scale, bool)
        for start, weight in zip(axis.starts, axis.weights, strict=True):
            mask[start * scale : start * scale + weight.size] |= (weight > 1e-6) & (weight < 1 - 1e-6)
        return mask

    return joined(height)[:, None] | joined(width)[None, :]
