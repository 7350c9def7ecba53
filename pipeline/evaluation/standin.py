"""A stand-in super-resolution network that costs nothing: nearest-neighbour 4x.

For measuring what the pipeline around the network costs (tiling, assembly, encoding) on inputs whose
real networks would take hours on a small CPU: the network's own memory is one tile's activations,
the same for every image size, so the difference a large output makes is all outside it. Used by
benchmarks/bench_bigscan.py and tests/test_bigscan_cgroup.py; never by the daemon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.backends.base import BackendInfo
from pipeline.types import EngineConfig


def _info() -> BackendInfo:
    return BackendInfo(backend="numpy", device="cpu", precision="fp32", reason="stand-in: nearest 4x")


@dataclass
class NearestUpscaler:
    scale: int = 4
    size_multiple: int = 1
    batch_size: int = 1
    tile: int = 256
    info: BackendInfo = field(default_factory=_info)

    def warm_up(self) -> None:
        return None

    def suggest_tile(self) -> int:
        return self.tile

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return batch.repeat(self.scale, axis=2).repeat(self.scale, axis=3)


def nearest_loader(model_id: str, engine: EngineConfig, denoise: float | None) -> NearestUpscaler:
    return NearestUpscaler()
