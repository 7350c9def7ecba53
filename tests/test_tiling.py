"""Tiling: tiled output equals whole-image output, one fixed tile shape, batches, out-of-memory splits,
strip-wise output in the final dtype; and the measured bar on the real RealESRGAN_x4plus."""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest

from pipeline.evaluation.fidelity import seam_mask
from pipeline.tiling import (
    DEFAULT_BLEND,
    DEFAULT_PAD,
    plan_axis,
    run_local,
    run_whole,
    tile_count,
    upscale_tiled,
)
from pipeline.types import DeviceOutOfMemoryError, EngineConfig
from tests.fake_upscalers import ConvStackUpscaler, OutOfMemoryUpscaler


def noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width, 3), dtype=np.float32)


@pytest.mark.parametrize(("height", "width"), [(70, 53), (64, 64), (97, 33), (20, 150), (5, 7)])
@pytest.mark.parametrize(("tile", "pad", "blend"), [(32, 8, 4), (24, 6, 2), (48, 12, 8)])
def test_tiled_output_equals_whole_image_output(
    height: int, width: int, tile: int, pad: int, blend: int
) -> None:
    # receptive radius 4 < pad - blend/2: every kept pixel saw all of its context, so tiling is exact
    network = ConvStackUpscaler(scale=2, layers=4)
    image = noise_image(height, width)
    result = upscale_tiled(image, network, tile, pad, np.float32, blend=blend)
    np.testing.assert_allclose(result.pixels, run_whole(image, network), atol=1e-5)


def test_every_tile_has_the_same_shape_and_never_the_whole_image() -> None:
    network = ConvStackUpscaler(scale=4, layers=2)
    result = upscale_tiled(noise_image(150, 110), network, 48, 8, np.uint8, blend=4)
    # 150 rows need 5 windows of at most 48 (8 px context): 43 rows each suffice; 110 columns need 48
    assert set(network.calls) == {(1, 3, 43, 48)}
    assert result.tiles == len(network.calls) > 1 and result.tile_shape == (43, 48)


@pytest.mark.parametrize("align", [1, 2, 4])
@pytest.mark.parametrize("tile", [48, 64, 256, 512])
def test_windows_are_the_shortest_that_keep_the_count_and_the_overlap(tile: int, align: int) -> None:
    pad = 32 if tile >= 256 else 8
    for size in range(tile + 1, 5 * tile, 7):
        axis = plan_axis(size, tile, pad, DEFAULT_BLEND // 2, scale=4, align=align)
        count = math.ceil((size - tile) / (tile - 2 * pad)) + 1
        assert len(axis.starts) == count and axis.length <= tile and axis.length % align == 0
        assert axis.starts[0] == 0 and axis.starts[-1] + axis.length == size
        overlaps = [a + axis.length - b for a, b in itertools.pairwise(axis.starts)]
        assert min(overlaps) >= 2 * pad, (size, axis.starts, axis.length)
        shorter = axis.length - align
        if shorter >= 2 * pad:
            spread = [round(i * (size - shorter) / (count - 1)) for i in range(count)]
            assert min(a + shorter - b for a, b in itertools.pairwise(spread)) < 2 * pad, "not shortest"


def test_short_image_axis_is_one_tile_of_the_image_length() -> None:
    network = ConvStackUpscaler(scale=2, layers=2)
    upscale_tiled(noise_image(20, 200), network, 64, 8, np.uint8, blend=4)
    assert {call[2:] for call in network.calls} == {(20, 62)}  # 4 windows of 62 cover 200 columns


def test_size_multiple_is_met_by_reflecting_the_border() -> None:
    network = ConvStackUpscaler(scale=2, layers=2)
    network.size_multiple = 4  # type: ignore[attr-defined]  # e.g. an x1/x2 model's pixel unshuffle
    result = upscale_tiled(noise_image(10, 13), network, 64, 8, np.float32, blend=4)
    assert network.calls == [(1, 3, 12, 16)] and result.pixels.shape == (20, 26, 3)


def test_tiles_go_to_the_network_in_batches_of_batch_size() -> None:
    network = ConvStackUpscaler(scale=2, layers=2, batch_size=3)
    image = noise_image(40, 120)
    result = upscale_tiled(image, network, 32, 6, np.float32, blend=4)
    assert network.calls[0][0] == 3 and max(call[0] for call in network.calls) == 3
    assert sum(call[0] for call in network.calls) == result.tiles
    np.testing.assert_allclose(result.pixels, run_whole(image, network), atol=1e-5)


def test_out_of_memory_splits_the_tile_and_retries_without_failing() -> None:
    network = OutOfMemoryUpscaler(scale=2, layers=4, max_pixels=40 * 40)
    image = noise_image(170, 153, seed=3)
    result = upscale_tiled(image, network, 64, 8, np.float32, blend=4)
    assert network.refused == 1  # after the first refusal every later tile goes straight to the half size
    assert result.oom_splits == result.tiles > 1
    shapes = {call[2:] for call in network.calls}  # one shape: the half tile, shortened to fit
    assert len(shapes) == 1 and max(max(shape) for shape in shapes) <= 32
    np.testing.assert_allclose(
        result.pixels, run_whole(image, ConvStackUpscaler(scale=2, layers=4)), atol=1e-5
    )


def test_out_of_memory_on_a_batch_retries_with_smaller_batches() -> None:
    network = OutOfMemoryUpscaler(scale=2, layers=2, batch_size=4, max_pixels=2 * 40 * 40)
    image = noise_image(100, 100)
    result = upscale_tiled(image, network, 40, 8, np.float32, blend=4)
    assert result.oom_splits == 0 and network.refused >= 1
    assert max(call[0] for call in network.calls) == 2
    np.testing.assert_allclose(
        result.pixels, run_whole(image, ConvStackUpscaler(scale=2, layers=2)), atol=1e-5
    )


def test_out_of_memory_even_for_the_smallest_tile_is_reported() -> None:
    network = OutOfMemoryUpscaler(scale=2, layers=1, max_pixels=4)
    with pytest.raises(DeviceOutOfMemoryError, match="16x16"):
        upscale_tiled(noise_image(64, 64), network, 32, 4, np.uint8, blend=2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_output_is_written_in_the_final_dtype(dtype: type) -> None:
    network = ConvStackUpscaler(scale=2, layers=2)
    image = noise_image(50, 40)
    result = upscale_tiled(image, network, 32, 6, dtype, blend=4)
    assert result.pixels.dtype == dtype
    peak = np.iinfo(dtype).max
    expected = np.clip(run_whole(image, network) * peak + 0.5, 0, peak).astype(dtype)
    off = np.abs(result.pixels.astype(np.int64) - expected)
    assert off.max() <= 1 and (off > 0).mean() < 0.01  # 8-bit blends in fixed point: rare 1-level rounding


def test_gray_output_is_the_channel_mean() -> None:
    network = ConvStackUpscaler(scale=2, layers=2)
    image = noise_image(30, 30)
    result = upscale_tiled(image, network, 16, 4, np.float32, blend=2, gray=True)
    np.testing.assert_allclose(result.pixels, run_whole(image, network).mean(axis=2), atol=1e-5)


def test_progress_reports_every_tile_in_order() -> None:
    events: list[tuple[str, int, int]] = []
    result = upscale_tiled(
        noise_image(90, 90),
        ConvStackUpscaler(scale=2, layers=1),
        32,
        6,
        np.uint8,
        lambda stage, done, total: events.append((stage, done, total)),
        blend=4,
    )
    assert events[0] == ("upscale", 0, result.tiles) and events[-1] == ("upscale", result.tiles, result.tiles)
    assert [done for _, done, _ in events] == list(range(result.tiles + 1))
    assert tile_count(90, 90, 32, 6, 4, 2) == result.tiles


@pytest.mark.parametrize("size", [100, 257, 1000])
def test_blend_weights_sum_to_one_everywhere(size: int) -> None:
    axis = plan_axis(size, 64, DEFAULT_PAD // 2, DEFAULT_BLEND // 2, scale=4)
    total = np.zeros(size * 4)
    for start, weight in zip(axis.starts, axis.weights, strict=True):
        total[start * 4 : (start + axis.length) * 4] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert axis.starts[0] == 0 and axis.starts[-1] + axis.length == size


def test_blending_memory_is_one_strip_not_the_whole_image() -> None:
    class Nearest:  # cheap network: the test is about the tiler's own allocations
        scale, batch_size = 4, 1

        def __call__(self, batch: np.ndarray) -> np.ndarray:
            return batch.repeat(4, axis=2).repeat(4, axis=3)

    image = noise_image(1024, 256)
    tracemalloc.start()
    try:
        result = upscale_tiled(image, Nearest(), 64, 8, np.uint8, blend=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float_output = 4096 * 1024 * 3 * 4  # what a whole-image float32 accumulator would need (50 MB)
    assert result.pixels.nbytes == float_output // 4
    assert peak < result.pixels.nbytes + float_output * 0.25


@pytest.mark.slow
def test_real_model_tiled_matches_whole_image_on_a_real_photo(tmp_path_factory) -> None:
    """The bar: default tiled (default backend and precision) vs whole-image fp32 of the same model,
    >= 45 dB PSNR and no pixel on a tile border off by more than 16/255."""
    from skimage import data

    from pipeline.backends import load_upscaler

    cache = str(tmp_path_factory.getbasetemp() / "restorer-state" / "cache")  # shared with the CLI tests
    image = data.astronaut()[60:188, 160:288].astype(np.float32) / 255  # 128x128: face, hair, background
    reference = load_upscaler(
        "RealESRGAN_x4plus", EngineConfig(cache_dir=cache, backend="torch", precision="fp32")
    )
    whole = np.floor(np.clip(run_whole(image, reference) * 255 + 0.5, 0, 255))  # rounded like the tiler
    default = load_upscaler("RealESRGAN_x4plus", EngineConfig(cache_dir=cache, tile=96))
    result = upscale_tiled(image, default, default.suggest_tile(), DEFAULT_PAD, np.uint8)
    assert result.tiles == 4 and result.tile_shape == (96, 96)
    difference = np.abs(result.pixels.astype(np.float64) - whole)
    psnr = 10 * np.log10(255**2 / (difference**2).mean())
    assert psnr >= 45, f"tiled vs whole PSNR {psnr:.2f} dB"
    seams = seam_mask(128, 128, 96, DEFAULT_PAD, DEFAULT_BLEND, 4)
    assert seams.any()
    assert difference[seams].max() <= 16, f"seam pixel off by {difference[seams].max():.0f}/255"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_input_is_converted_one_window_at_a_time(dtype: type) -> None:
    peak = np.iinfo(dtype).max
    pixels = np.random.default_rng(5).integers(0, peak + 1, (45, 38, 3), dtype=dtype)
    network = ConvStackUpscaler(scale=2, layers=2)
    from_integers = upscale_tiled(pixels, network, 24, 6, np.float32, blend=4)
    from_floats = upscale_tiled(pixels.astype(np.float32) / peak, network, 24, 6, np.float32, blend=4)
    np.testing.assert_allclose(from_integers.pixels, from_floats.pixels, atol=1e-6)


@pytest.mark.parametrize(("height", "width"), [(70, 53), (16, 16), (9, 40), (33, 97)])
@pytest.mark.parametrize(("tile", "context"), [(16, 2), (24, 3), (20, 4)])
def test_local_network_in_windows_equals_the_whole_array(
    height: int, width: int, tile: int, context: int
) -> None:
    # receptive radius 2 <= context: hard cuts at the overlap middles are exact, no blending needed
    network = ConvStackUpscaler(scale=4, layers=2)
    array = noise_image(height, width, seed=7).transpose(2, 0, 1)[None]
    result = run_local(array, network, tile, context, scale=4)
    np.testing.assert_allclose(result, network(np.ascontiguousarray(array)), atol=1e-5)
    assert {call[2:] for call in network.calls[:-1]} <= {(min(height, tile), min(width, tile))}


def test_local_network_with_too_little_context_is_not_exact() -> None:
    # the same cut with a radius-4 network: proves the equality above depends on the context
    network = ConvStackUpscaler(scale=4, layers=4)
    array = noise_image(60, 60, seed=7).transpose(2, 0, 1)[None]
    result = run_local(array, network, 16, 1, scale=4)
    assert np.abs(result - network(np.ascontiguousarray(array))).max() > 1e-3
