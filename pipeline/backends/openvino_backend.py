"""OpenVINO backend: the default on CPU (fastest measured engine here, ~90 % of the bf16 peak).

It starts from the network's dynamic IR (pipeline/backends/ir.py: converted once per weights, in a separate
process; this module never imports torch) and cuts a static IR per input shape from it, kept in
<cache_dir>/openvino/ir keyed by the weights' sha256 + shape; OpenVINO's own CACHE_DIR keeps the compiled
blob, so a restarted worker neither converts nor recompiles. Precision and threads are pinned (ir.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

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
from pipeline.backends.ir import IrNetwork, compile_config, new_core, save_ir
from pipeline.types import DeviceOutOfMemoryError, EngineConfig

log = logging.getLogger(__name__)


class OpenVinoUpscaler:
    batch_size: int = 1  # one tile already keeps every core busy

    def __init__(self, network: IrNetwork, info: BackendInfo, engine: EngineConfig) -> None:
        self.scale: int = network.scale
        self.info = info
        self._arch: str = network.architecture
        self.size_multiple: int = network.size_multiple  # read by the tiler
        self._dynamic_xml = network.xml
        self._key = network.xml.stem.removesuffix("-dynamic")
        self._ir_dir = network.xml.parent
        self.threads = engine.threads or available_cores()
        self._core = new_core(engine.cache_dir)
        self._config = compile_config(info.precision, self.threads)
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

    def _ensure_ir(self, shape: tuple[int, ...]) -> Path:
        """A static IR for one input shape (keyed by weights + shape), cut from the dynamic one."""
        xml = self.ir_path(shape)
        if xml.is_file() and xml.with_suffix(".bin").is_file():
            return xml
        model = self._core.read_model(str(self._dynamic_xml))
        model.reshape({model.input(0): list(shape)})
        save_ir(model, xml)
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
