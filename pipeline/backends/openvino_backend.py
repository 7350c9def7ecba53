"""OpenVINO backend: the default on CPU (the fastest engine measured here; docs/performance.md).

It starts from the network's dynamic IR (pipeline/backends/ir.py: converted once per weights, in a separate
process; this module never imports torch). Nothing on disk depends on the input size: every part is
compiled ONCE with dynamic height and width, so an image of a new size costs no compilation, no file and no
memory of its own (a dynamic model measured as fast as a static one of the same shape; docs/performance.md).
OpenVINO's CACHE_DIR keeps one compiled blob per part, so a restarted worker neither converts nor
recompiles. What the CPU plugin keeps per input shape (its primitive cache) is bounded by
CPU_RUNTIME_CACHE_CAPACITY.

RRDBNet (x4plus, anime_6B) runs in two parts cut from the same IR: the trunk at input resolution (92 % of
the FLOPs) on the tiles the tiler sends, then the 4x upsampler over the trunk's features in small windows
(pipeline.tiling.run_local, exact: its receptive radius is under 2 feature pixels). The upsampler's
activations at 4x resolution are what made big tiles expensive; in small windows they are not, so the
tile grows and fewer pixels are computed twice as context. The two parts are cut once and saved as IR
files of their own beside the dynamic one (part_xmls). Precision and threads are pinned (ir.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.backends.base import (
    BackendInfo,
    available_cores,
    available_ram_bytes,
    cap_tile,
    is_out_of_memory,
    tile_for_memory,
)
from pipeline.backends.ir import BLOB_GENERATION, IrNetwork, compile_config, ir_ready, new_core, save_ir
from pipeline.tiling import pad_for_network, run_local, size_needs
from pipeline.types import DeviceOutOfMemoryError, EngineConfig

if TYPE_CHECKING:
    import openvino as ov

log = logging.getLogger(__name__)

# Primitives the CPU plugin keeps for the input shapes it has seen (its default is 5000): RRDBNet has ~350
# convolutions, so this holds a few shapes' worth; an image of an unseen size rebuilds its primitives
# (a fraction of a second), and memory stays flat however many sizes arrive.
RUNTIME_CACHE_CAPACITY = 1024
SPLIT_PARTS = ("trunk", "upsampler")


@dataclass(frozen=True)
class NetworkLayout:
    """How a network is run: whole, or trunk + upsampler (RRDBNet) with the tile sizes measured for it.

    tile_max: largest input tile edge (context included) the tiler gets on CPU.
    bytes_per_pixel: peak working memory per input tile pixel (the tile is lowered when RAM is short).
    upsampler_tile / upsampler_context: the upsampler's windows over the features (feature pixels)."""

    split: bool
    tile_max: int
    bytes_per_pixel: int
    upsampler_tile: int = 0
    upsampler_context: int = 0


WHOLE = NetworkLayout(split=False, tile_max=256, bytes_per_pixel=16 * 1024)
# RRDBNet without pixel-unshuffle (x4plus, anime_6B). Trunk tile and upsampler window: docs/performance.md.
RRDB_SPLIT = NetworkLayout(
    split=True, tile_max=512, bytes_per_pixel=2 * 1024, upsampler_tile=128, upsampler_context=4
)


def layout_for(arch: str, size_multiple: int, scale: int = 4) -> NetworkLayout:
    """RRDBNet without pixel-unshuffle (x4plus, anime_6B) runs split; x2plus (size multiple 2) crops inside
    its upsampler, a 1x RRDBNet has no upsampler to split off, and the compact networks are cheap per
    pixel, so they run whole. Every other architecture (user files) runs whole.

    The split pays because the tiler cuts each axis into the shortest windows that keep the overlap
    (pipeline/tiling.py): cut at the full 512 px length, the big trunk tiles would compute far more context
    than the photo has pixels. Measurements, before and after: docs/performance.md ("Upscaling at the
    machine's limit")."""
    return RRDB_SPLIT if arch == "ESRGAN" and size_multiple == 1 and scale > 1 else WHOLE


class OpenVinoUpscaler:
    batch_size: int = 1  # one tile already keeps every core busy

    def __init__(self, network: IrNetwork, info: BackendInfo, engine: EngineConfig) -> None:
        self.scale: int = network.scale
        self.info = info
        self._arch: str = network.architecture
        self.size_multiple: int = network.size_multiple  # read by the tiler
        self.size_minimum: int = network.size_minimum
        self.size_square: bool = network.size_square
        self._dynamic_xml = network.xml
        self._key = network.xml.stem.removesuffix("-dynamic")
        _remove_leftovers(network.xml.parent, self._key)
        self.threads = engine.threads or available_cores()
        self._core = new_core(engine.cache_dir)
        self._config = {
            **compile_config(info.precision, self.threads),
            "CPU_RUNTIME_CACHE_CAPACITY": RUNTIME_CACHE_CAPACITY,
        }
        self.layout = layout_for(self._arch, self.size_multiple, self.scale)
        # Planned once: following the free RAM of the moment would change the tile between images.
        self._tile: int = tile_for_memory(
            available_ram_bytes(), self.layout.bytes_per_pixel, cap_tile(self.layout.tile_max, engine.tile)
        )
        # Compiled now, not at the first tile: loading's temporary memory is freed before an image's
        # output and blend strip exist (the first tile of a 2000x1500 photo was the process's peak).
        self._requests: dict[str, Any] = self._compile()

    def suggest_tile(self) -> int:
        return self._tile

    def dynamic_ir(self) -> Path:
        """The network's one IR (free batch, height and width), converted once per weights by ir.py."""
        return self._dynamic_xml

    def part_xmls(self) -> dict[str, Path]:
        """The IR file of each part. Compiled from its path, OpenVINO finds the cached blob by the file and
        never reads or hashes the 67 MB graph: ~0.35 s less per process start than cutting the dynamic IR
        and compiling the result (docs/performance.md). The parts are cut once and saved beside the
        dynamic IR, named by its key and BLOB_GENERATION (a different cut gets a different file)."""
        if not self.layout.split:
            return {"network": self._dynamic_xml}
        paths = {part: _part_xml(self._dynamic_xml.parent, self._key, part) for part in SPLIT_PARTS}
        if not all(ir_ready(path) for path in paths.values()):
            dynamic = str(self._dynamic_xml)
            parts = split_at_upsampler(self._core.read_model(dynamic), self._core.read_model(dynamic))
            for path, model in zip(paths.values(), parts, strict=True):
                save_ir(model, path)
        return paths

    def _compile(self) -> dict[str, Any]:
        """Compile (or load the cached blob of) every part: part name -> its InferRequest."""
        started = time.monotonic()
        requests = {}
        for name, xml in self.part_xmls().items():
            requests[name] = self._core.compile_model(str(xml), "CPU", self._config).create_infer_request()
        log.info(
            "compiled %s (%s) %s in %.1f s",
            self._key,
            "+".join(requests),
            self._config,
            time.monotonic() - started,
        )
        return requests

    def _request(self, part: str) -> Any:
        return self._requests[part]

    def warm_up(self) -> None:
        """Run one small tile so the first image does not pay for the plugin's first-inference setup (the
        parts were compiled, or their cached blobs loaded, when this upscaler was made)."""
        side = 32 * self.size_multiple
        self(np.zeros((self.batch_size, 3, side, side), np.float32))  # __call__ pads to the minimum

    def runtime_properties(self) -> dict[str, str]:
        """What the compiled models actually run with (precision, threads), as OpenVINO says."""
        names = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS")
        compiled = self._request(next(iter(self.layout_parts()))).get_compiled_model()
        values = {name: compiled.get_property(name) for name in names}
        # Precision comes back as an openvino.Type ("f32", "bf16" by its type name).
        return {name: getattr(v, "get_type_name", lambda v=v: str(v))() for name, v in values.items()}

    def layout_parts(self) -> tuple[str, ...]:
        return SPLIT_PARTS if self.layout.split else ("network",)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        padded, h, w = pad_for_network(np.ascontiguousarray(batch, dtype=np.float32), size_needs(self))
        try:
            if self.layout.split:
                features = self._infer("trunk", padded)
                out = run_local(
                    features,
                    lambda window: self._infer("upsampler", window),
                    self.layout.upsampler_tile,
                    self.layout.upsampler_context,
                    self.scale,
                )
            else:
                out = self._infer("network", padded)
        except (RuntimeError, MemoryError) as error:
            if is_out_of_memory(error):
                raise DeviceOutOfMemoryError(
                    f"{batch.shape[0]} tile(s) of {h}x{w} do not fit in RAM"
                ) from None
            raise
        # A new array: the whole network's output is the request's own buffer, reused by its next call.
        # The split's comes from run_local, already fresh, so it is clipped in place.
        cropped = out[:, :, : h * self.scale, : w * self.scale]
        return np.clip(cropped, 0.0, 1.0, out=cropped if self.layout.split else None)

    def _infer(self, part: str, batch: np.ndarray) -> np.ndarray:
        """One inference; the result is a view of the request's output, valid until its next call."""
        request = self._request(part)
        request.infer({0: batch})
        return request.get_output_tensor(0).data


def split_at_upsampler(network: ov.Model, second_copy: ov.Model) -> tuple[ov.Model, ov.Model]:
    """RRDBNet's trunk (input -> features at input resolution) and upsampler (features -> output), cut at
    the input of the first nearest-neighbour Interpolate (RRDBNet's first upsampling step).

    Two copies of the same IR: the upsampler is made by rewiring the graph, which must not touch the
    trunk's."""
    import openvino as ov

    trunk_cut = _first_upsampling_input(network)
    trunk = concats_as_sums(ov.Model([trunk_cut], network.get_parameters(), "trunk"))
    upsample_cut = _first_upsampling_input(second_copy)
    channels = upsample_cut.get_partial_shape()[1]
    features = ov.opset13.parameter(ov.PartialShape([-1, channels, -1, -1]), ov.Type.f32, name="features")
    for consumer in upsample_cut.get_target_inputs():
        consumer.replace_source_output(features.output(0))
    return trunk, ov.Model(second_copy.get_results(), [features], "upsampler")


def concats_as_sums(model: ov.Model) -> ov.Model:
    """Rewrite every Convolution(Concat(a, b, ...), W) as Conv(a, W_a) + Conv(b, W_b) + ...: the same
    arithmetic without materialising the concatenation.

    RRDBNet's dense blocks concatenate before 4 of every 5 convolutions (276 Concats in x4plus). The CPU
    plugin runs those as copies in a reference kernel (channels are innermost in the layout its AMX
    convolutions use, so it cannot concatenate in place): a large share of the trunk's time, which this
    rewrite saves (numbers: docs/performance.md, "Trunk on big tiles"). Convolutions whose weights are not
    a plain Constant are left as they are."""
    import openvino.opset13 as ops

    for conv in model.get_ordered_ops():
        if conv.get_type_name() != "Convolution":
            continue
        source = conv.input(0).get_source_output()
        concat, weights = source.get_node(), conv.input(1).get_source_output().get_node()
        if concat.get_type_name() != "Concat" or weights.get_type_name() != "Constant":
            continue
        if len(source.get_target_inputs()) != 1 or concat.get_attributes()["axis"] not in (1, -3):
            continue
        kernel, attributes = weights.get_data(), conv.get_attributes()
        total, first_channel = None, 0
        for index in range(concat.get_input_size()):
            part = concat.input(index).get_source_output()
            channels = part.get_partial_shape()[1].get_length()
            part_weights = ops.constant(
                np.ascontiguousarray(kernel[:, first_channel : first_channel + channels])
            )
            partial = ops.convolution(
                part,
                part_weights,
                attributes["strides"],
                attributes["pads_begin"],
                attributes["pads_end"],
                attributes["dilations"],
                attributes["auto_pad"],
            )
            total = partial if total is None else ops.add(total, partial)
            first_channel += channels
        assert total is not None  # a Concat has inputs
        conv.output(0).replace(total.output(0))
    model.validate_nodes_and_infer_types()
    return model


def _first_upsampling_input(model: ov.Model) -> Any:  # openvino Output
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Interpolate":
            return op.input(0).get_source_output()
    raise ValueError("no Interpolate in the network: it has no RRDBNet upsampler to split off")


def _part_xml(ir_folder: Path, key: str, part: str) -> Path:
    """Where a part cut from the network `key` by this BLOB_GENERATION is saved."""
    return ir_folder / f"{key}-{part}-g{BLOB_GENERATION}.xml"


def _remove_leftovers(ir_folder: Path, key: str) -> None:
    """Earlier versions wrote a static IR per input shape next to this network's dynamic one (67 MB each
    for x4plus, one per image size seen), and parts cut by another BLOB_GENERATION; nothing reads them any
    more. Only this network's (`key`): other runners (faces) keep their own fixed-shape IRs in the same
    folder."""
    per_shape = ir_folder.glob(f"{key}-[0-9]*x[0-9]*x[0-9]*x[0-9]*.xml")
    current = {_part_xml(ir_folder, key, part) for part in SPLIT_PARTS}
    other_cuts = [xml for part in SPLIT_PARTS for xml in ir_folder.glob(f"{key}-{part}-g*.xml")]
    for xml in [*per_shape, *other_cuts]:
        if xml in current:
            continue
        for path in (xml, xml.with_suffix(".bin")):
            path.unlink(missing_ok=True)
