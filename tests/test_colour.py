"""Which colour path a photo takes (pipeline/colour.py), on real photos both ways, and the toned rebuild.

The thresholds were chosen from these numbers (8-bit YCbCr chroma on the blurred 256 px copy):
- gray-as-RGB: p99.9 chroma 1.8-2.1 with per-channel noise sigma 5 and JPEG; 2.9 at 150 px without JPEG
  (GRAY_MAX_CHROMA 6);
- toned (sepia, Lab-sepia, cyanotype from skimage's camera/coins/page/text, JPEG q80): p99 chroma 29-37,
  hue spread 0.8-9.7 deg (the photo-app sepia matrix clips highlights yellow), tone residual 1.8-8.4
  (the most on the text page, JPEG chroma around letters);
- colour: astronaut 78 / 22 deg / 42, chelsea 51 / 6.5 / 16.9, coffee 82 / 7.7 / 21, rocket 45 / 39 / 20,
  immunohistochemistry 39 / 30 / 17, retina 85 / 3.2 / 10.2, Hubble deep field 18 / 91 / 5.3
  (p99 chroma / hue spread / residual): each fails at least one of <= 60 / 20 / 10.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from pipeline.colour import STRIP_ROWS, analyse_colour, luma, toned_to_rgb
from tests.colour_cases import TONES, gray_as_rgb, hue_differences, jpeg, sepia_matrix, toned

COLOUR_PHOTOS = [
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "immunohistochemistry",
    "retina",
    "hubble_deep_field",
]


def gray_photo(name: str) -> np.ndarray:
    if name in ("astronaut", "chelsea", "coffee"):
        return cv2.cvtColor(getattr(skimage.data, name)(), cv2.COLOR_RGB2GRAY)
    return getattr(skimage.data, name)()


def shrink(rgb: np.ndarray, width: int) -> np.ndarray:
    height = round(rgb.shape[0] * width / rgb.shape[1])
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)


def path_of(rgb: np.ndarray, alpha: np.ndarray | None = None) -> str:
    return analyse_colour(rgb, alpha).report.path


@pytest.mark.parametrize("variant", ["as is", "jpeg q70", "160 px"])
@pytest.mark.parametrize("name", COLOUR_PHOTOS)
def test_real_colour_photos_stay_colour(name: str, variant: str) -> None:
    rgb = getattr(skimage.data, name)()
    rgb = {"as is": rgb, "jpeg q70": jpeg(rgb, 70), "160 px": shrink(rgb, 160)}[variant]
    plan = analyse_colour(rgb, None)
    assert plan.report.path == "colour", plan.report.reason
    assert plan.tone is None and not plan.as_gray


@pytest.mark.parametrize("name", ["camera", "coins", "page", "moon", "astronaut", "chelsea"])
def test_gray_stored_as_rgb_with_sensor_noise_and_jpeg_is_gray(name: str) -> None:
    gray = gray_photo(name)
    assert path_of(np.repeat(gray[:, :, None], 3, axis=2)) == "gray"  # exactly equal channels
    assert path_of(jpeg(gray_as_rgb(gray, noise=5.0), 85)) == "gray"
    assert path_of(gray_as_rgb(shrink(gray, 150), noise=5.0)) == "gray"  # small: little to average
    assert path_of(jpeg(gray_as_rgb(gray, noise=8.0), 95)) == "gray"  # a noisy scan, fine JPEG
    deep = gray_as_rgb(gray, noise=5.0).astype(np.uint16) * 257
    assert path_of(deep) == "gray"


def test_a_slight_scanner_cast_is_still_gray_and_a_strong_one_is_kept_as_a_tone() -> None:
    gray = gray_as_rgb(gray_photo("camera"), noise=3.0).astype(np.int16)
    slight = np.clip(gray + np.array([3, 0, -3]), 0, 255).astype(np.uint8)
    strong = np.clip(gray + np.array([10, 0, -12]), 0, 255).astype(np.uint8)
    assert path_of(jpeg(slight)) == "gray"
    assert analyse_colour(jpeg(strong), None).report.path == "toned"


@pytest.mark.parametrize("tone", sorted(TONES))
@pytest.mark.parametrize("name", ["camera", "coins", "page", "astronaut"])
def test_toned_prints_are_toned(name: str, tone: str) -> None:
    hue, chroma = TONES[tone]
    plan = analyse_colour(jpeg(toned(gray_photo(name), hue, chroma), 85), None)
    assert plan.report.path == "toned", plan.report.reason
    assert plan.tone is not None and plan.as_gray
    assert plan.report.hue_spread_degrees is not None and plan.report.hue_spread_degrees < 10


@pytest.mark.parametrize("name", ["camera", "coins", "page", "astronaut"])
def test_the_photo_app_sepia_filter_is_toned(name: str) -> None:
    assert path_of(jpeg(sepia_matrix(gray_photo(name)), 80)) == "toned"


def test_colour_mode_colour_keeps_a_toned_photo_in_colour_and_says_what_was_measured() -> None:
    sepia = jpeg(sepia_matrix(gray_photo("camera")), 80)
    plan = analyse_colour(sepia, None, "colour")
    assert plan.report.path == "colour" and plan.tone is None and not plan.as_gray
    assert plan.report.reason.startswith("colour_mode = colour") and "measured toned" in plan.report.reason
    assert plan.report.tone_residual_p95 is not None  # the numbers are still reported


def test_transparent_pixels_have_no_say() -> None:
    gray = np.repeat(gray_photo("camera")[:, :, None], 3, axis=2).copy()
    alpha = np.full(gray.shape[:2], 255, np.uint8)
    gray[:, :200], alpha[:, :200] = (255, 0, 0), 0  # saturated red, but fully transparent
    assert path_of(gray, alpha) == "gray"
    assert path_of(gray, None) == "colour"  # the same pixels, opaque
    nothing = analyse_colour(gray, np.zeros_like(alpha)).report
    assert nothing.path == "colour" and nothing.reason == "nothing opaque to measure"


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_toned_rebuild_gives_back_the_photo_from_its_own_luma(dtype: type) -> None:
    """The rebuild alone (no network): tone(Y) + residual on the photo's own luma is the photo again, over
    several strips, to within JPEG-level differences and with its hue."""
    photo = jpeg(toned(gray_photo("astronaut")[:300, :280], *TONES["sepia"]), 90)
    assert photo.shape[0] > STRIP_ROWS
    if dtype == np.uint16:
        photo = photo.astype(np.uint16) * 257
    plan = analyse_colour(photo, None)
    assert plan.tone is not None
    rebuilt = toned_to_rgb(luma(photo), plan.tone)
    assert rebuilt.dtype == photo.dtype and rebuilt.shape == photo.shape
    peak = np.iinfo(dtype).max
    error = np.abs(rebuilt.astype(np.float64) - photo) / peak * 255
    assert error.mean() < 2.0 and np.percentile(error, 99) < 8.0
    assert np.percentile(hue_differences(photo, rebuilt), 95) < 8.0
    # Luma is what the network restored: the rebuild keeps it, but for rounding and a channel clipped at
    # black or white by the added chroma.
    luma_error = np.abs(luma(rebuilt).astype(np.float64) - luma(photo)) / peak * 255
    assert np.percentile(luma_error, 99) <= 1.0 and luma_error.max() <= 3.0


def test_toned_rebuild_at_a_larger_size_follows_the_photo() -> None:
    photo = jpeg(toned(gray_photo("coins"), *TONES["cyanotype"]), 90)
    plan = analyse_colour(photo, None)
    assert plan.tone is not None
    height, width = photo.shape[:2]
    bigger = cv2.resize(luma(photo), (width * 3, height * 3), interpolation=cv2.INTER_CUBIC)
    rebuilt = toned_to_rgb(bigger, plan.tone)
    expected = cv2.resize(photo, (width * 3, height * 3), interpolation=cv2.INTER_CUBIC)
    assert np.abs(rebuilt.astype(np.int64) - expected).mean() < 3.0
    assert np.percentile(hue_differences(expected, rebuilt), 95) < 8.0


def test_a_stain_on_a_toned_print_is_kept() -> None:
    """What the tone curve does not explain (a stain, uneven toning) comes back from the residual map."""
    photo = toned(gray_photo("camera"), *TONES["sepia"]).astype(np.int16)
    photo[200:260, 300:360] += np.array([6, 0, -8], np.int16)  # a yellow-brown stain, 60 px
    photo = jpeg(np.clip(photo, 0, 255).astype(np.uint8), 90)
    plan = analyse_colour(photo, None)
    assert plan.tone is not None, plan.report.reason
    rebuilt = toned_to_rgb(luma(photo), plan.tone).astype(np.int64)
    stain = (rebuilt[215:245, 315:345] - photo[215:245, 315:345]).mean(axis=(0, 1))
    assert np.abs(stain).max() < 2.5  # the stain's colour is there, not just the tone


@pytest.mark.parametrize(("rows", "height"), [(1, 7), (5, 5), (37, 300), (300, 37), (64, 1000)])
def test_residual_strips_are_the_whole_map_resized(rows: int, height: int) -> None:
    """The rebuild resizes the residual strip by strip; stitched, the strips are one bilinear resize."""
    from pipeline.colour import residual_rows

    residual = np.random.default_rng(rows).normal(0, 0.05, (rows, 23, 2)).astype(np.float32)
    whole = cv2.resize(residual, (61, height), interpolation=cv2.INTER_LINEAR).reshape(height, 61, 2)
    strips = [
        residual_rows(residual, top, min(top + 16, height), (height, 61)) for top in range(0, height, 16)
    ]
    assert np.abs(np.concatenate(strips) - whole).max() < 1e-5


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (2, 2), (3, 500), (500, 3), (8, 8), (16, 16)])
def test_tiny_and_thin_images_choose_safely_and_rebuild(shape: tuple[int, int]) -> None:
    """A few pixels can be fitted by any tone curve: random colour never leaves the colour path."""
    rng = np.random.default_rng(sum(shape))
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    assert path_of(np.repeat(gray[:, :, None], 3, axis=2)) == "gray"
    assert path_of(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)) == "colour"
    plan = analyse_colour(sepia_matrix(gray), None)
    assert plan.report.path == ("toned" if gray.size >= 64 else "colour")
    if plan.tone is not None:
        for out_shape in ((1, 1), (1, 5), (9, 2), (shape[0] * 3, shape[1] * 3)):
            rebuilt = toned_to_rgb(rng.integers(0, 256, out_shape, dtype=np.uint8), plan.tone)
            assert rebuilt.shape == (*out_shape, 3)
