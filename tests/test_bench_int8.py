"""benchmarks/bench_int8.py's inputs, without nncf or a network: what it calibrates on and what it scores."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_int8 import (
    CALIBRATION_EDGES,
    calibration_crops,
    centre_crop,
    float_convolutions,
    parse_args,
    variant,
)


def test_calibration_crops_are_network_inputs_and_repeatable() -> None:
    crops = calibration_crops(6)
    assert [crop.shape for crop in crops] == [(1, 3, edge, edge) for edge in CALIBRATION_EDGES * 2]
    assert all(crop.dtype == np.float32 and crop.min() >= 0.0 and crop.max() <= 1.0 for crop in crops)
    assert all(np.array_equal(a, b) for a, b in zip(crops, calibration_crops(6), strict=True))


def test_centre_crop_cuts_real_pixels_never_resizes() -> None:
    pixels = np.arange(400 * 600 * 3, dtype=np.uint16).reshape(400, 600, 3)
    cropped = centre_crop(pixels, 320)
    assert cropped.shape == (320, 320, 3)
    assert np.array_equal(cropped, pixels[40:360, 140:460])
    small = np.zeros((100, 50), np.uint8)
    assert centre_crop(small, 320).shape == (100, 50)


def test_variant_names_the_int8_ir_by_its_settings() -> None:
    assert variant(parse_args([])) == "mixed-minmax"
    assert variant(parse_args(["--preset", "performance", "--float-ends"])) == "performance-minmax-float-ends"
    assert variant(parse_args(["--overflow-fix", "all"])) == "mixed-minmax-overflow-fix"


def test_float_convolutions_picks_the_ends_and_the_upsampler() -> None:
    ov = pytest.importorskip("openvino")
    ops = ov.opset13
    x = ops.parameter([1, 3, 8, 8], np.float32)

    def conv(source: object, channels: int, name: str) -> object:
        weights = ops.constant(np.ones((channels, 3 if name == "first" else 4, 3, 3), np.float32))
        node = ops.convolution(source, weights, [1, 1], [1, 1], [1, 1], [1, 1])
        node.set_friendly_name(name)
        return node

    trunk = conv(conv(x, 4, "first"), 4, "body")
    up = ops.interpolate(trunk, ops.constant(np.array([16, 16], np.int64)), "nearest", "sizes", axes=[2, 3])
    model = ov.Model([conv(conv(up, 4, "hr"), 3, "last")], [x])
    assert float_convolutions(model, ends=True, upsampler=False) == ["first", "last"]
    assert float_convolutions(model, ends=False, upsampler=True) == ["hr", "last"]
    assert float_convolutions(model, ends=True, upsampler=True) == ["first", "hr", "last"]
    assert float_convolutions(model, ends=False, upsampler=False) == []
