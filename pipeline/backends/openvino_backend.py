"""OpenVINO backend: the default on CPU (fastest measured engine here, ~90 % of the bf16 peak).

The torch module is converted with openvino.convert_model once per weights (dynamic H/W) and a static IR
per input shape is cut from it, both kept in <cache_dir>/openvino/ir keyed by the weights' sha256 (+ shape);
OpenVINO's own CACHE_DIR keeps the compiled blob, so a restarted worker neither converts nor recompiles.
Precision and threads are pinned explicitly: OpenVINO would otherwise pick bf16 by itself on AMX /
avx512_bf16 hosts, making output depend on the machine.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.base import (
    CPU_TILE_MAX,
    BackendInfo,
    available_cores,
    available_ram_bytes,
    bytes_per_input_pixel,
    cap_tile,
    is_out_of_memory,
    pad_to_multiple,
    tile_for_memory,
)
from pipeline.types import DeviceOutOfMemoryError, EngineConfig

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

log = logging.getLogger(__name__)

OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoUpscaler:
    batch_size: int = 1  # one tile already keeps every core busy

    def __init__(
        self, descriptor: ImageModelDescriptor, info: BackendInfo, engine: EngineConfig, weights_key: str
    ) -> None:
        import openvino as ov

        self.scale: int = int(descriptor.scale)
        self.info = info
        self._arch: str = descriptor.architecture.id
        self.size_multiple: int = int(descriptor.size_requirements.multiple_of)  # read by the tiler
        self._module = descriptor.model.eval()
        self._key = f"{self._arch}-{weights_key[:40]}"
        root = Path(engine.cache_dir) / "openvino"
        self._ir_dir = root / "ir"
        self.threads = engine.threads or available_cores()
        self._core = ov.Core()
        self._core.set_property({"CACHE_DIR": str(root / "compiled")})
        self._config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISION[info.precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._requests: dict[tuple[int, ...], object] = {}
        # Planned once: following the free RAM of the moment would change the tile shape between images,
        # and every new shape costs a compilation.
        per_pixel = bytes_per_input_pixel(self._arch, info.precision)
        self._tile: int = tile_for_memory(
            available_ram_bytes(), per_pixel, cap_tile(CPU_TILE_MAX, engine.tile)
        )

    def suggest_tile(self) -> int:
        return self._tile

    def ir_path(self, shape: tuple[int, ...]) -> Path:
        return self._ir_dir / f"{self._key}-{'x'.join(map(str, shape))}.xml"

    def _dynamic_ir(self) -> Path:
        """The network converted once per weights with free batch/height/width; tracing is the slow part
        (10-70 s for RRDBNet here), so it happens once, not once per tile shape."""
        xml = self._ir_dir / f"{self._key}-dynamic.xml"
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            return xml
        import openvino as ov
        import torch

        started = time.monotonic()
        example = torch.zeros((1, 3, 32, 32))
        with torch.no_grad(), warnings.catch_warnings():
            # torch.jit.trace is deprecated in favour of torch.export, but it is the path OpenVINO's
            # PyTorch frontend converts fastest and most completely; check_trace=False skips a second
            # full trace that only doubles the conversion time for these static, branch-free networks.
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(self._module, example, check_trace=False)
            model = ov.convert_model(traced, example_input=example, input=[(-1, 3, -1, -1)])
        _save_atomically(model, xml)
        log.info("converted %s to OpenVINO IR in %.1f s", self._key, time.monotonic() - started)
        return xml

    def _ensure_ir(self, shape: tuple[int, ...]) -> Path:
        """A static IR for one input shape (keyed by weights + shape), cut from the dynamic one."""
        xml = self.ir_path(shape)
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            return xml
        model = self._core.read_model(str(self._dynamic_ir()))
        model.reshape({model.input(0): list(shape)})
        _save_atomically(model, xml)
        return xml

    def _request(self, shape: tuple[int, ...]):
        request = self._requests.get(shape)
        if request is None:
            started = time.monotonic()
            compiled = self._core.compile_model(str(self._ensure_ir(shape)), "CPU", self._config)
            request = compiled.create_infer_request()
            self._requests[shape] = request
            log.info(
                "compiled %s %s %s in %.1f s", self._key, shape, self._config, time.monotonic() - started
            )
        return request

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Convert/compile for one input shape now, so the first image does not pay for it."""
        self._request(tuple(int(v) for v in shape))

    def warm_up(self) -> None:
        """Compile for the tile shape the tiler will send for images larger than one tile."""
        tile = self.suggest_tile()
        self.prepare((self.batch_size, 3, tile, tile))

    def runtime_properties(self, shape: tuple[int, ...]) -> dict[str, str]:
        """What the compiled model for `shape` actually runs with (precision, threads), as OpenVINO says."""
        compiled = self._request(tuple(int(v) for v in shape)).get_compiled_model()
        names = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")
        values = {name: compiled.get_property(name) for name in names}
        # Precision comes back as an openvino.Type ("f32", "bf16" by its type name).
        return {name: getattr(v, "get_type_name", lambda v=v: str(v))() for name, v in values.items()}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        padded, h, w = pad_to_multiple(np.ascontiguousarray(batch, dtype=np.float32), self.size_multiple)
        request = self._request(tuple(int(v) for v in padded.shape))
        try:
            request.infer({0: padded})
        except (RuntimeError, MemoryError) as error:
            if is_out_of_memory(error):
                raise DeviceOutOfMemoryError(
                    f"{batch.shape[0]} tile(s) of {h}x{w} do not fit in RAM"
                ) from None
            raise
        out = request.get_output_tensor(0).data
        return np.clip(out[:, :, : h * self.scale, : w * self.scale], 0.0, 1.0).astype(np.float32, copy=True)


def _save_atomically(model, xml: Path) -> None:  # model: openvino.Model
    """Save under a temporary name, then rename .bin before .xml: an .xml's presence means complete."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    tmp = xml.with_name(f".{xml.stem}.{os.getpid()}.xml")
    ov.save_model(model, tmp, compress_to_fp16=False)  # the default would round weights to fp16
    os.replace(tmp.with_suffix(".bin"), xml.with_suffix(".bin"))
    os.replace(tmp, xml)
