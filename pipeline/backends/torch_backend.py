"""PyTorch backend: CUDA (fp16/bf16 autocast, channels_last, several tiles per batch) and the CPU fallback."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.backends.base import (
    CPU_TILE_MAX,
    GPU_TILE_MAX,
    BackendInfo,
    available_cores,
    available_ram_bytes,
    batch_for_memory,
    bytes_per_input_pixel,
    cap_tile,
    is_out_of_memory,
    tile_for_memory,
)
from pipeline.tiling import pad_for_network, size_needs
from pipeline.types import DeviceOutOfMemoryError, EngineConfig

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device_type: str, precision: str) -> contextlib.AbstractContextManager[object]:
    """fp16/bf16 autocast on `device_type`, or nothing for fp32 (shared by the SR and face runners)."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


class TorchUpscaler:
    def __init__(self, descriptor: ImageModelDescriptor, info: BackendInfo, engine: EngineConfig) -> None:
        self.scale: int = int(descriptor.scale)
        self.info = info
        self._arch: str = descriptor.architecture.id
        self.size_multiple: int = int(descriptor.size_requirements.multiple_of)  # read by the tiler
        self.size_minimum: int = int(descriptor.size_requirements.minimum)
        self.size_square: bool = bool(descriptor.size_requirements.square)
        self._tile_cap = engine.tile
        self._device = torch.device(info.device)
        if self._device.type == "cpu":
            torch.set_num_threads(engine.threads or available_cores())
        else:
            # No cuDNN autotuning: tile shapes follow each image's size (the shortest windows, pipeline/
            # tiling.py), and benchmark mode would time every new shape and keep its choice for good.
            torch.backends.cudnn.benchmark = False
        # channels_last lets oneDNN / cuDNN pick their fastest convolution kernels.
        # spandrel's own call per architecture (FBCNN's network returns (image, quality): the image).
        self._call_network = descriptor._call_fn
        self._model = descriptor.model.eval().to(self._device).to(memory_format=torch.channels_last)
        # Planned once, after the weights are on the device: a tile edge that followed the free memory of
        # the moment would make the same photo tile differently from one day to the next.
        self._tile: int = self._plan_tile()
        self.batch_size: int = self._plan_batch()

    def _free_bytes(self) -> int:
        if self._device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self._device)
            return int(free)
        return available_ram_bytes()

    def _per_pixel(self) -> int:
        return bytes_per_input_pixel(self._arch, self.info.precision)

    def suggest_tile(self) -> int:
        return self._tile

    def _plan_tile(self) -> int:
        limit = GPU_TILE_MAX if self._device.type == "cuda" else CPU_TILE_MAX
        return tile_for_memory(self._free_bytes(), self._per_pixel(), cap_tile(limit, self._tile_cap))

    def _plan_batch(self) -> int:
        if self._device.type != "cuda":
            return 1  # on CPU one tile already uses every core
        return batch_for_memory(self._free_bytes(), self._per_pixel(), self._tile)

    def warm_up(self) -> None:
        """One tiny forward pass: loads kernels (and on CUDA initialises the context) before the first job."""
        size = 16 * self.size_multiple
        self(np.zeros((1, 3, size, size), np.float32))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        padded, h, w = pad_for_network(np.ascontiguousarray(batch, dtype=np.float32), size_needs(self))
        try:
            with torch.inference_mode(), autocast(self._device.type, self.info.precision):
                x = torch.from_numpy(padded).to(self._device, non_blocking=True)
                y = self._call_network(self._model, x.contiguous(memory_format=torch.channels_last))
                y = y[:, :, : h * self.scale, : w * self.scale].float().clamp_(0.0, 1.0)
                return y.cpu().numpy()
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the failed attempt's blocks back before the tiler retries smaller
            raise DeviceOutOfMemoryError(
                f"{batch.shape[0]} tile(s) of {h}x{w} do not fit in GPU memory"
            ) from None
        except (RuntimeError, MemoryError) as error:
            if is_out_of_memory(error):
                raise DeviceOutOfMemoryError(
                    f"{batch.shape[0]} tile(s) of {h}x{w} do not fit in RAM"
                ) from None
            raise
