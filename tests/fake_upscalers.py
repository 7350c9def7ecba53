"""Small numpy networks with a real receptive field, standing in for a backend where the test is about
tiling or plumbing (not about the model). They follow pipeline.backends' Upscaler protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.backends.base import BackendInfo
from pipeline.types import DeviceOutOfMemoryError


def _conv3x3(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """N,C,H,W zero-padded 3x3 convolution (like torch's padding=1)."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    height, width = x.shape[2], x.shape[3]
    out = np.zeros((x.shape[0], weights.shape[0], height, width), np.float32)
    for dy in range(3):
        for dx in range(3):
            window = padded[:, :, dy : dy + height, dx : dx + width]
            out += np.einsum("oc,nchw->nohw", weights[:, :, dy, dx], window)
    return out + bias[None, :, None, None]


def numpy_backend() -> BackendInfo:
    return BackendInfo(backend="numpy", device="cpu", precision="fp32", reason="test network")


@dataclass
class ConvStackUpscaler:
    """`layers` 3x3 convs (receptive radius = layers) with tanh, a residual, then nearest upsampling."""

    scale: int = 4
    layers: int = 4
    batch_size: int = 1
    tile: int = 64
    seed: int = 0
    size_multiple: int = 1
    calls: list[tuple[int, ...]] = field(default_factory=list)
    info: BackendInfo = field(default_factory=numpy_backend)
    warmed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        self.weights = [rng.normal(0, 0.25, (3, 3, 3, 3)).astype(np.float32) for _ in range(self.layers)]
        self.biases = [rng.normal(0, 0.05, 3).astype(np.float32) for _ in range(self.layers)]

    def warm_up(self) -> None:
        self.warmed += 1

    def suggest_tile(self) -> int:
        return self.tile

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.ndim == 4 and batch.shape[1] == 3 and batch.dtype == np.float32
        self.calls.append(tuple(batch.shape))
        x = batch
        for weights, bias in zip(self.weights, self.biases, strict=True):
            x = np.tanh(_conv3x3(x, weights, bias))
        x = np.clip(batch + 0.5 * x, 0.0, 1.0)
        return x.repeat(self.scale, axis=2).repeat(self.scale, axis=3)


@dataclass
class OutOfMemoryUpscaler(ConvStackUpscaler):
    """Raises DeviceOutOfMemoryError for any batch with more than `max_pixels` input pixels."""

    max_pixels: int = 32 * 32
    refused: int = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] * batch.shape[2] * batch.shape[3] > self.max_pixels:
            self.refused += 1
            raise DeviceOutOfMemoryError(f"fake device: batch {batch.shape} does not fit")
        return super().__call__(batch)
