"""Restorer: the restore flow and its report, with a small numpy network standing in for the backend
(the real network runs in test_tiling's slow test and in test_cli_restore)."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.backends.base import cap_tile
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer, mode_label, output_scale, resize_to
from pipeline.types import EngineConfig, FaceReport, Image
from tests.fake_upscalers import ConvStackUpscaler, OutOfMemoryUpscaler

NO_FACES = RestoreOptions(faces=False)


@dataclass
class CountingLoader:
    """Upscaler loader that records each load, like pipeline.backends.load_upscaler but numpy-only."""

    tile: int = 32
    loads: list[tuple[str, float | None]] = field(default_factory=list)
    made: list[ConvStackUpscaler] = field(default_factory=list)
    out_of_memory_above: int | None = None

    def __call__(self, model_id: str, engine: EngineConfig, denoise: float | None) -> ConvStackUpscaler:
        self.loads.append((model_id, denoise))
        tile = cap_tile(self.tile, engine.tile)  # as the real backends do: they own the tile
        if self.out_of_memory_above is not None:
            network = OutOfMemoryUpscaler(scale=4, layers=2, tile=tile, max_pixels=self.out_of_memory_above)
        else:
            network = ConvStackUpscaler(scale=4, layers=2, tile=tile)
        self.made.append(network)
        return network


def random_pixels(shape: tuple[int, ...], dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    peak = np.iinfo(dtype).max
    return np.random.default_rng(seed).integers(0, peak + 1, shape, dtype=dtype)


def test_report_fills_every_field() -> None:
    loader = CountingLoader()
    restorer = Restorer(EngineConfig(), upscaler_loader=loader)
    image = Image(
        random_pixels((20, 30, 3)), source_format="jpg", notes=["from the decoder"], original_mode="RGB"
    )
    output, report = restorer.restore(image, NO_FACES)
    assert output.pixels.shape == (80, 120, 3) and output.pixels.dtype == np.uint8
    assert report.input_size == [30, 20] and report.output_size == [120, 80]
    assert report.input_mode == report.output_mode == "RGB 8-bit"
    assert report.model == "RealESRGAN_x4plus" and report.scale == 4.0
    assert (report.backend, report.device, report.precision) == ("numpy", "cpu", "fp32")
    assert report.backend_reason == "test network"
    assert report.tiles == 1 and report.tile_size == 32
    assert report.seconds > 0 and "upscale" in report.stage_seconds
    assert "from the decoder" in report.notes and output.notes == report.notes
    assert report.to_dict()["faces"] == []


def test_upscalers_are_loaded_once_per_model_and_denoise() -> None:
    loader = CountingLoader()
    restorer = Restorer(EngineConfig(), upscaler_loader=loader)
    image = Image(random_pixels((8, 8, 3)))
    for options in (
        NO_FACES,
        NO_FACES,
        NO_FACES.replace(model="other"),
        NO_FACES.replace(denoise_strength=0.5),
    ):
        restorer.restore(image, options)
    assert loader.loads == [("RealESRGAN_x4plus", None), ("other", None), ("RealESRGAN_x4plus", 0.5)]


def test_warm_up_loads_before_the_first_image() -> None:
    loader = CountingLoader()
    restorer = Restorer(EngineConfig(), upscaler_loader=loader)
    assert loader.loads == []
    restorer.warm_up(NO_FACES)
    assert loader.loads == [("RealESRGAN_x4plus", None)] and loader.made[0].warmed == 1
    restorer.restore(Image(random_pixels((8, 8, 3))), NO_FACES)
    assert len(loader.loads) == 1


def test_the_test_network_is_a_complete_upscaler() -> None:
    from pipeline.backends.base import Upscaler

    assert isinstance(ConvStackUpscaler(), Upscaler)
    assert not isinstance(lambda batch: batch, Upscaler)  # a bare callable lacks scale, info, warm_up...


def test_tile_comes_from_the_upscaler_capped_by_config() -> None:
    restorer = Restorer(EngineConfig(tile=24), upscaler_loader=CountingLoader(tile=64))
    _, report = restorer.restore(Image(random_pixels((50, 50, 3))), NO_FACES)
    assert report.tile_size == 24 and report.tiles > 1


def test_the_backend_alone_owns_the_tile() -> None:
    # A second cap in the restorer once made OpenVINO compile one tile shape at warm-up and use another.
    def ignores_the_setting(model_id: str, engine: EngineConfig, denoise: float | None) -> ConvStackUpscaler:
        return ConvStackUpscaler(scale=4, layers=2, tile=48)

    restorer = Restorer(EngineConfig(tile=24), upscaler_loader=ignores_the_setting)
    _, report = restorer.restore(Image(random_pixels((100, 100, 3))), NO_FACES)
    assert report.tile_size == 48


def test_16bit_rgba_stays_16bit_rgba_and_alpha_goes_through_the_network() -> None:
    loader = CountingLoader()
    pixels = random_pixels((12, 10, 4), np.uint16)
    output, report = Restorer(EngineConfig(), upscaler_loader=loader).restore(Image(pixels), NO_FACES)
    assert output.pixels.shape == (48, 40, 4) and output.pixels.dtype == np.uint16
    assert report.input_mode == report.output_mode == "RGBA 16-bit"
    assert len(loader.made[0].calls) == 2 and report.tiles == 2  # colour, then alpha as 3 channels
    assert "alpha upscaled by the network (as 3 replicated channels)" in report.notes


def test_constant_alpha_skips_the_network() -> None:
    loader = CountingLoader()
    pixels = random_pixels((12, 10, 4))
    pixels[:, :, 3] = 255
    output, report = Restorer(EngineConfig(), upscaler_loader=loader).restore(Image(pixels), NO_FACES)
    assert len(loader.made[0].calls) == 1
    assert (output.pixels[:, :, 3] == 255).all()
    assert "alpha is constant: filled in without the network" in report.notes


def test_gray_stays_gray() -> None:
    output, report = Restorer(EngineConfig(), upscaler_loader=CountingLoader()).restore(
        Image(random_pixels((9, 11)), original_mode="L"), NO_FACES
    )
    assert output.pixels.shape == (36, 44) and report.output_mode == "L 8-bit"


def test_gray_with_alpha_stays_gray_with_alpha() -> None:
    gray = random_pixels((9, 11))
    pixels = np.dstack([gray, gray, gray, random_pixels((9, 11), seed=1)])
    output, report = Restorer(EngineConfig(), upscaler_loader=CountingLoader()).restore(
        Image(pixels, original_mode="LA"), NO_FACES
    )
    assert output.pixels.shape == (36, 44, 4) and report.output_mode == "LA 8-bit"
    assert (output.pixels[:, :, 0] == output.pixels[:, :, 1]).all()


# -- colour paths: black-and-white stays black-and-white (pipeline/colour.py) ------------------------------


def camera_crop(size: tuple[int, int] = (40, 48)) -> np.ndarray:
    from skimage import data

    return data.camera()[200 : 200 + size[0], 220 : 220 + size[1]]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_gray_stored_as_rgb_is_restored_as_l_is_and_written_back_as_rgb(dtype: type) -> None:
    """The test network colours a gray input (its convolutions mix channels): the gray path gives exactly
    what the same photo stored as L gives, on all three channels, and the file stays RGB."""
    gray = camera_crop().astype(dtype) * (257 if dtype == np.uint16 else 1)
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    as_l, _ = restorer.restore(Image(gray, original_mode="L"), NO_FACES)
    output, report = restorer.restore(Image(rgb, original_mode="RGB"), NO_FACES)
    assert output.pixels.shape == (160, 192, 3) and output.pixels.dtype == dtype
    bits = 16 if dtype == np.uint16 else 8
    assert report.input_mode == report.output_mode == f"RGB {bits}-bit"
    for channel in range(3):
        assert np.array_equal(output.pixels[:, :, channel], as_l.pixels)
    assert report.colour is not None and report.colour.path == "gray"
    assert report.to_dict()["colour"]["path"] == "gray"
    colour, colour_report = restorer.restore(Image(rgb), NO_FACES.replace(colour_mode="colour"))
    assert colour_report.colour.path == "colour" and "measured gray" in colour_report.colour.reason
    assert not np.array_equal(colour.pixels[:, :, 0], colour.pixels[:, :, 2])  # what the gray path avoids


def test_gray_rgba_with_jpeg_noise_keeps_its_alpha_and_gets_equal_channels() -> None:
    from tests.colour_cases import gray_as_rgb, jpeg

    rgb = jpeg(gray_as_rgb(camera_crop(), noise=4.0), 85)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    output, report = restorer.restore(Image(np.dstack([rgb, alpha]), original_mode="RGBA"), NO_FACES)
    assert output.pixels.shape == (160, 192, 4) and report.output_mode == "RGBA 8-bit"
    assert report.colour.path == "gray"
    pixels = output.pixels
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    sr_only, _ = restorer.restore(Image(np.dstack([rgb, alpha])), NO_FACES.replace(colour_mode="colour"))
    assert np.array_equal(pixels[..., 3], sr_only.pixels[..., 3])  # alpha takes its own path, unchanged


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee"])
def test_a_colour_photo_takes_the_colour_path_byte_for_byte(name: str) -> None:
    from skimage import data

    photo = resize_to(getattr(data, name)(), 64, 48)  # the whole photo (a corner of plain wall is toned)
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    auto, report = restorer.restore(Image(photo), NO_FACES)
    forced, _ = restorer.restore(Image(photo), NO_FACES.replace(colour_mode="colour"))
    assert report.colour.path == "colour" and report.colour.chroma_p99 > 20
    assert np.array_equal(auto.pixels, forced.pixels)


def test_a_sepia_photo_keeps_its_tone_through_a_network_that_colours() -> None:
    from tests.colour_cases import TONES, hue_differences, jpeg, toned

    sepia = jpeg(toned(camera_crop((64, 64)), *TONES["sepia"]), 90)
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    output, report = restorer.restore(Image(sepia), NO_FACES)
    assert report.colour.path == "toned" and report.colour.tone_residual_p95 is not None
    assert "colour" in report.stage_seconds  # measuring and the rebuild are timed like other stages
    reference = resize_to(sepia, 256, 256)
    toned_error = np.percentile(hue_differences(reference, output.pixels), 95)
    coloured, _ = restorer.restore(Image(sepia), NO_FACES.replace(colour_mode="colour"))
    coloured_error = np.percentile(hue_differences(reference, coloured.pixels), 95)
    assert toned_error < 10.0 < coloured_error, (toned_error, coloured_error)


@pytest.mark.parametrize(
    ("scale", "size"), [(1.0, (10, 8)), (2.0, (20, 16)), (2.5, (25, 20)), (6.0, (60, 48))]
)
def test_any_output_scale_from_one_up(scale: float, size: tuple[int, int]) -> None:
    options = NO_FACES.replace(scale=scale)
    output, report = Restorer(EngineConfig(), upscaler_loader=CountingLoader()).restore(
        Image(random_pixels((8, 10, 3))), options
    )
    assert (output.width, output.height) == size and report.output_size == list(size)
    assert report.scale == scale


def test_scale_below_one_is_refused() -> None:
    # Refused when the options are made (pipeline/options.py, the one place that states it).
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        NO_FACES.replace(scale=0.5)


def test_max_output_megapixels_lowers_the_scale_and_says_so() -> None:
    options = NO_FACES.replace(max_output_megapixels=0.01)  # 10,000 output pixels from a 40x25 input
    output, report = Restorer(EngineConfig(), upscaler_loader=CountingLoader()).restore(
        Image(random_pixels((25, 40, 3))), options
    )
    assert output.width * output.height <= 10_000 and report.scale < 4
    assert any("scale lowered from 4x" in note for note in report.notes)


def test_output_scale_helper() -> None:
    assert output_scale(100, 100, RestoreOptions(scale=4)) == (4.0, None)
    scale, note = output_scale(1000, 1000, RestoreOptions(scale=4, max_output_megapixels=4))
    assert scale == 2.0 and note is not None
    scale, note = output_scale(4000, 3000, RestoreOptions(scale=4, max_output_megapixels=1))
    assert scale == 1.0 and note is not None and "already exceeds" in note


def test_resize_uses_area_down_and_lanczos_up() -> None:
    stripes = np.tile(np.array([0, 255], np.uint8), (8, 4))  # 8x8 alternating columns
    down = resize_to(stripes, 4, 4)
    assert np.abs(down.astype(int) - 128).max() <= 1  # INTER_AREA averages the pairs
    up = resize_to(np.array([[0, 255]], np.uint8), 8, 4)
    assert up.shape == (4, 8) and up.dtype == np.uint8


def test_out_of_memory_never_fails_the_image() -> None:
    loader = CountingLoader(tile=64, out_of_memory_above=32 * 32)
    output, report = Restorer(EngineConfig(), upscaler_loader=loader).restore(
        Image(random_pixels((60, 60, 3))), NO_FACES
    )
    assert output.pixels.shape == (240, 240, 3)
    assert any("split and retried" in note for note in report.notes)


def test_mode_labels() -> None:
    assert mode_label(np.zeros((2, 2), np.uint16)) == "L 16-bit"
    assert mode_label(np.zeros((2, 2, 4), np.uint8), "LA") == "LA 8-bit"
    assert mode_label(np.zeros((2, 2, 4), np.uint8), "RGBA") == "RGBA 8-bit"


class RecordingFaceStage:
    """Stands in for pipeline.faces.FaceStage to check what the Restorer hands it and when."""

    def __init__(self) -> None:
        self.prepared_with: np.ndarray | None = None
        self.pasted_into: np.ndarray | None = None
        self.scale: float | None = None

    def prepare(self, rgb: np.ndarray, options: RestoreOptions, on_progress: Any = None) -> Any:
        self.prepared_with = rgb.copy()

        @dataclass
        class Prepared:
            faces: list[int] = field(default_factory=lambda: [1])
            seconds: dict[str, float] = field(default_factory=lambda: {"faces-detect": 0.01})
            notes: list[str] = field(default_factory=list)
            model: str | None = None  # the face model that ran (PreparedFaces.model)

        return Prepared()

    def paste(self, output: np.ndarray, prepared: Any, scale: float) -> list[FaceReport]:
        self.pasted_into, self.scale = output.copy(), scale
        output[:4, :4] = output.max()  # a visible in-place change
        return [FaceReport(box=[0, 0, 4, 4], score=0.99, landmarks=[[1.0, 1.0]] * 5, restored=True)]

    def warm_up(self, options: RestoreOptions) -> None:
        pass


@pytest.mark.parametrize("on_disk", [False, True])
@pytest.mark.parametrize("gray", [False, True])
def test_faces_prepare_on_the_input_and_paste_into_the_final_output(
    gray: bool, on_disk: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if on_disk:  # as a large scan's output would be (pipeline/scratch.py)
        import pipeline.scratch

        monkeypatch.setattr(pipeline.scratch, "IN_MEMORY_MAX_BYTES", 0)
    restorer = Restorer(EngineConfig(scratch_dir=str(tmp_path)), upscaler_loader=CountingLoader())
    stage = RecordingFaceStage()
    restorer._face_stage = stage
    pixels = random_pixels((10, 12) if gray else (10, 12, 3))
    output, report = restorer.restore(Image(pixels), RestoreOptions(scale=2))
    # The input's own integer pixels (gray replicated): no whole-image float copy of a large scan.
    assert stage.prepared_with is not None and stage.prepared_with.shape == (10, 12, 3)
    assert stage.prepared_with.dtype == np.uint8
    assert np.array_equal(stage.prepared_with[:, :, 0], pixels if gray else pixels[:, :, 0])
    assert stage.pasted_into is not None and stage.pasted_into.shape == (20, 24, 3)
    assert stage.pasted_into.dtype == np.uint8 and stage.scale == 2.0
    assert output.pixels.ndim == (2 if gray else 3)
    assert (output.pixels[:4, :4] == output.pixels.max()).all()  # the paste reached the output
    assert len(report.faces) == 1 and report.faces[0].restored
    assert report.stage_seconds["faces-detect"] == 0.01


@pytest.fixture(scope="module")
def detector_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The face detector's converted networks, shared by this module's tests."""
    return str(tmp_path_factory.mktemp("detector-cache"))


@pytest.mark.slow
def test_faces_with_the_real_face_stage_find_the_astronaut(detector_cache: str) -> None:
    from skimage import data

    crop = data.astronaut()[0:200, 120:320]  # her face, ~90 px
    engine = EngineConfig(weights_dir="/nonexistent", cache_dir=detector_cache)
    restorer = Restorer(engine, upscaler_loader=CountingLoader(tile=256))
    output, report = restorer.restore(Image(crop), RestoreOptions(scale=1))
    assert output.pixels.shape == crop.shape
    assert len(report.faces) == 1
    face = report.faces[0]
    assert 60 < (face.box[0] + face.box[2]) / 2 < 150 and face.score > 0.9  # crop coordinates
    assert not face.restored and face.reason  # no face weights here: detected, kept, and said why


@pytest.mark.parametrize(
    ("source", "requested", "expected"),
    [
        ("heic", "same", "HEIC input written as JPG"),
        ("gif", "same", "GIF input written as PNG"),
        ("png", "jpg", "JPEG has no alpha"),
    ],
)
def test_report_says_what_the_output_format_changes(source: str, requested: str, expected: str) -> None:
    pixels = random_pixels((8, 8, 4 if source == "png" else 3))
    options = NO_FACES.replace(output_format=requested)
    _, report = Restorer(EngineConfig(), upscaler_loader=CountingLoader()).restore(
        Image(pixels, source_format=source), options
    )
    assert any(note.startswith(expected) for note in report.notes), report.notes


# -- restore_bytes: the one per-file path, and the progress it reports -------------------------------------


def encoded_file(pixels: np.ndarray, fmt: str) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("pil_format", "requested", "fmt", "extension"),
    [
        ("PNG", "same", "png", ".png"),
        ("JPEG", "same", "jpg", ".jpg"),
        ("GIF", "same", "png", ".png"),
        ("PNG", "tiff", "tiff", ".tif"),
        ("TIFF", "webp", "webp", ".webp"),
    ],
)
def test_restore_bytes_decodes_restores_and_encodes(
    pil_format: str, requested: str, fmt: str, extension: str
) -> None:
    from PIL import Image as PILImage

    from pipeline import load_image, restore_bytes

    data = encoded_file(random_pixels((12, 20, 3)), pil_format)
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    result = restore_bytes(restorer, data, NO_FACES.replace(output_format=requested), max_pixels=10_000)
    assert (result.format, result.extension) == (fmt, extension)
    assert result.report.input_size == [20, 12] and result.report.output_size == [80, 48]
    written = load_image(result.data)
    assert written.source_format == fmt and (written.width, written.height) == (80, 48)
    assert PILImage.open(io.BytesIO(result.data)).size == (80, 48)


def test_restore_bytes_refuses_bad_input_with_the_load_errors() -> None:
    from pipeline import CorruptImageError, DecompressionBombError, restore_bytes

    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    data = encoded_file(random_pixels((12, 20, 3)), "PNG")
    with pytest.raises(DecompressionBombError):
        restore_bytes(restorer, data, NO_FACES, max_pixels=239)
    with pytest.raises(CorruptImageError):
        restore_bytes(restorer, data[: len(data) // 2], NO_FACES, max_pixels=10_000)
    assert restorer._upscalers == {}  # refused before any network was loaded


class ProgressFaceStage(RecordingFaceStage):
    """Reports progress as pipeline.faces.FaceStage does: detection, then one step per face restored."""

    def prepare(self, rgb: np.ndarray, options: RestoreOptions, on_progress: Any = None) -> Any:
        for stage, done, total in [("faces-detect", 0, 1), ("faces-detect", 1, 1)] + [
            ("faces-restore", face, 2) for face in range(3)
        ]:
            on_progress(stage, done, total)
        return super().prepare(rgb, options, on_progress)


def assert_progress_runs_forward(calls: list[tuple[str, int, int]]) -> None:
    """Every stage is one the pipeline declares, stages come in its order, and the overall fraction
    never goes down and ends at 1."""
    from pipeline import STAGE_WEIGHTS, stage_spans

    spans = stage_spans()
    assert [stage for stage, _, _ in calls if stage not in STAGE_WEIGHTS] == []
    order = list(STAGE_WEIGHTS)
    positions = [order.index(stage) for stage, _, _ in calls]
    assert positions == sorted(positions), calls
    fractions = []
    for stage, done, total in calls:
        start, end = spans[stage]
        fractions.append(start + (end - start) * (done / total if total else 1.0))
    assert all(b >= a for a, b in itertools.pairwise(fractions)), list(zip(calls, fractions, strict=True))
    assert fractions[-1] == 1.0


def test_stage_weights_sum_to_one_and_spans_are_contiguous() -> None:
    from pipeline import STAGE_WEIGHTS, stage_spans

    assert sum(STAGE_WEIGHTS.values()) == pytest.approx(1.0)
    spans = list(stage_spans().values())
    assert spans[0][0] == 0.0 and spans[-1][1] == 1.0
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    # The order the Restorer runs them in: faces are detected and restored on the input, then upscaled.
    assert list(STAGE_WEIGHTS) == ["decode", "faces-detect", "faces-restore", "upscale", "encode"]


def test_progress_of_a_photo_with_faces_and_alpha_never_goes_back() -> None:
    from pipeline import restore_bytes

    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader(tile=32))
    restorer._face_stage = ProgressFaceStage()
    rgba = random_pixels((40, 50, 4))  # several tiles, and an alpha plane that goes through the network
    calls: list[tuple[str, int, int]] = []
    result = restore_bytes(
        restorer,
        encoded_file(rgba, "PNG"),
        RestoreOptions(),
        max_pixels=10_000,
        on_progress=lambda *call: calls.append(call),
    )
    assert "alpha upscaled by the network (as 3 replicated channels)" in result.report.notes
    stages = list(dict.fromkeys(stage for stage, _, _ in calls))
    assert stages == ["decode", "faces-detect", "faces-restore", "upscale", "encode"]
    assert_progress_runs_forward(calls)


@pytest.mark.slow
def test_progress_with_the_real_face_stage_and_no_face_weights_runs_forward(
    tmp_path: Path, detector_cache: str
) -> None:
    from skimage import data

    from pipeline import restore_bytes

    crop = data.astronaut()[0:200, 120:320]  # her face, ~90 px: detected, not restored (no weights)
    engine = EngineConfig(weights_dir=str(tmp_path), cache_dir=detector_cache)
    restorer = Restorer(engine, upscaler_loader=CountingLoader(tile=128))
    calls: list[tuple[str, int, int]] = []
    result = restore_bytes(
        restorer,
        encoded_file(crop, "PNG"),
        RestoreOptions(scale=1),
        max_pixels=10**6,
        on_progress=lambda *call: calls.append(call),
    )
    assert len(result.report.faces) == 1 and not result.report.faces[0].restored
    assert_progress_runs_forward(calls)


# -- heartbeats while one long call runs (issue 9: a slow encode must not look like a hung worker) -------


def test_a_slow_encode_keeps_reporting_progress_from_the_calling_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading
    import time

    import pipeline.progress
    import pipeline.restorer
    from pipeline import restore_bytes

    real_encode = pipeline.restorer.encode_image

    def slow_encode(*args: Any, **kwargs: Any) -> bytes:
        time.sleep(2.0)  # a huge PNG or WebP on a slow CPU, without holding the GIL
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(pipeline.restorer, "encode_image", slow_encode)
    monkeypatch.setattr(pipeline.progress, "TICK_SECONDS", 0.2)
    restorer = Restorer(EngineConfig(), upscaler_loader=CountingLoader())
    calls: list[tuple[str, int, int]] = []
    threads: set[int] = set()

    def on_progress(stage: str, done: int, total: int) -> None:
        calls.append((stage, done, total))
        threads.add(threading.get_ident())

    result = restore_bytes(
        restorer,
        encoded_file(random_pixels((12, 20, 3)), "PNG"),
        NO_FACES,
        max_pixels=10_000,
        on_progress=on_progress,
    )
    assert result.report.output_size == [80, 48]
    assert calls.count(("encode", 0, 1)) >= 6  # the first report, then about one every 0.2 s for 2 s
    assert calls[-1] == ("encode", 1, 1)
    assert threads == {threading.get_ident()}  # the callback may own a database connection
    assert_progress_runs_forward(calls)


def test_heartbeats_stop_after_the_deadline_so_a_stuck_step_still_looks_hung(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import pipeline.progress
    from pipeline.progress import run_with_heartbeats

    monkeypatch.setattr(pipeline.progress, "TICK_SECONDS", 0.05)
    times: list[float] = []
    started = time.monotonic()
    result = run_with_heartbeats(
        lambda: time.sleep(1.2) or "done", lambda *call: times.append(time.monotonic()), "encode", 0.4
    )
    assert result == "done"
    assert len(times) >= 4 and max(times) - started < 0.6  # ticks for 0.4 s, then silence until the end


def test_a_step_error_is_raised_unchanged_and_a_callback_error_waits_for_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    import pipeline.progress
    from pipeline.progress import run_with_heartbeats

    monkeypatch.setattr(pipeline.progress, "TICK_SECONDS", 0.05)
    broken = ValueError("the encoder failed")

    def fail() -> None:
        time.sleep(0.2)
        raise broken

    with pytest.raises(ValueError) as raised:
        run_with_heartbeats(fail, lambda *call: None, "encode", 10.0)
    assert raised.value is broken

    class Cancelled(Exception):
        pass

    finished: list[float] = []
    ticks: list[float] = []

    def step() -> str:
        time.sleep(0.5)
        finished.append(time.monotonic())
        return "encoded"

    def cancel(*call: Any) -> None:
        ticks.append(time.monotonic())
        raise Cancelled()

    with pytest.raises(Cancelled):
        run_with_heartbeats(step, cancel, "encode", 10.0)
    # The step could not be interrupted: it ran to its end (memory freed) before the cancel was raised,
    # and the reports went on meanwhile, so a supervisor never saw a silent worker.
    assert len(finished) == 1 and len(ticks) >= 5 and ticks[-1] <= finished[0] + 0.1
