"""The face stage end to end: detect on the input, restore at 512, paste into the super-resolved output.

The network is a randomly initialised GFPGAN of the official shape written as {'params_ema': ...} into a
temporary weights folder, so it loads through the same code path (pipeline.weights -> spandrel) as a
user's GFPGANv1.4.pth. It is built once per module: one face costs ~5-10 s on a 2-core CPU.
"""

from __future__ import annotations

import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from pipeline.backends.base import BackendInfo
from pipeline.faces import FaceStage, PreparedFaces
from pipeline.faces.align import (
    destination_footprint,
    invert,
    rescale_source,
    similarity_to_template,
    warp_affine,
)
from pipeline.faces.restore import OpenVinoFaceRunner, face_module
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer, resize_to
from pipeline.types import EngineConfig, FaceReport, Image
from tests.colour_cases import TONES, gray_as_rgb, hue_differences, hue_gap, jpeg, mean_hue, toned
from tests.faces_support import random_gfpgan, write_random_gfpgan
from tests.fake_upscalers import ConvStackUpscaler


def astronaut_face(size: int = 192) -> np.ndarray:
    """A small input with one face of ~60 px (float32 RGB [0,1])."""
    crop = skimage.data.astronaut()[0:300, 80:380]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def super_resolve(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Stand-in for the SR output in its final dtype (the Restorer's tiled network does this for real)."""
    h, w = rgb.shape[:2]
    out = cv2.resize(rgb, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)


def mask_support(prepared: PreparedFaces, output_shape: tuple[int, ...], scale: float) -> np.ndarray:
    """Union, in output pixels, of every restored face's blend mask (where paste may write)."""
    support = np.zeros(output_shape[:2], bool)
    for face in prepared.faces:
        if face.mask is None:
            continue
        crop_to_output = cv2.invertAffineTransform(rescale_source(face.matrix, scale))
        size = (output_shape[1], output_shape[0])
        warped = warp_affine(face.mask, crop_to_output, size, interpolation=cv2.INTER_LINEAR)
        support |= warped > 0
    return support


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module: the detector's networks are converted once, not per test."""
    return tmp_path_factory.mktemp("faces-cache")


@pytest.fixture
def empty_stage(tmp_path: Path, shared_cache: Path) -> FaceStage:
    (tmp_path / "weights").mkdir()
    return FaceStage(EngineConfig(weights_dir=str(tmp_path / "weights"), cache_dir=str(shared_cache)))


@pytest.fixture(scope="module")
def gfpgan_stage(tmp_path_factory) -> FaceStage:
    root = tmp_path_factory.mktemp("faces")
    write_random_gfpgan(root / "weights")
    # torch fp32: no one-off OpenVINO conversion (~100 s) inside the test suite; the OpenVINO runner is
    # tested below on a small network.
    engine = EngineConfig(
        weights_dir=str(root / "weights"), cache_dir=str(root / "cache"), backend="torch", precision="fp32"
    )
    return FaceStage(engine)


# -- without restoration weights (fast) --------------------------------------------------------------------


def test_missing_weights_still_detects_and_says_which_file_to_add(empty_stage):
    rgb = astronaut_face()
    prepared = empty_stage.prepare(rgb, RestoreOptions())
    output = super_resolve(rgb, 2)
    before = output.copy()
    reports = empty_stage.paste(output, prepared, 2.0)
    assert len(reports) == 1
    report = reports[0]
    assert report.restored is False
    assert report.reason.startswith("face restoration unavailable: add GFPGANv1.4.pth to")
    assert "github.com/TencentARC/GFPGAN" in report.reason
    assert np.array_equal(output, before)
    # Box and landmarks are in OUTPUT pixels (2x the input's).
    x0, y0, x1, y1 = report.box
    assert 0 <= x0 < x1 <= 384 and 0 <= y0 < y1 <= 384 and x1 - x0 > 2 * 40
    assert all(x0 - 10 <= x <= x1 + 10 and y0 - 10 <= y <= y1 + 10 for x, y in report.landmarks)
    status = empty_stage.status()
    assert status["restoration_available"] is False and status["face_models_available"] == []
    assert status["reason"].startswith("face restoration unavailable: add GFPGANv1.4.pth")
    assert status["detector"].startswith("MTCNN") and "RetinaFace" in status["detector_note"]


def test_no_face_option_skips_detection_too(empty_stage):
    prepared = empty_stage.prepare(astronaut_face(), RestoreOptions(faces=False))
    assert prepared.faces == [] and prepared.detector is None
    assert empty_stage._detector is None  # the detector was never even loaded
    assert empty_stage.paste(super_resolve(astronaut_face(), 2), prepared, 2.0) == []


def test_missing_detector_package_is_a_note_not_a_crash(empty_stage, monkeypatch):
    def no_facenet(*_args: object) -> None:
        raise ImportError("No module named 'facenet_pytorch'")

    monkeypatch.setattr("pipeline.faces.stage.create_detector", no_facenet)
    prepared = empty_stage.prepare(astronaut_face(), RestoreOptions())
    assert prepared.faces == []
    assert "face detection unavailable" in prepared.notes[0] and "facenet-pytorch" in prepared.notes[0]


def test_photo_without_faces_reports_no_faces(empty_stage):
    rgb = skimage.data.chelsea().astype(np.float32) / 255.0
    prepared = empty_stage.prepare(rgb, RestoreOptions())
    assert prepared.faces == [] and "faces-detect" in prepared.seconds
    assert empty_stage.paste(super_resolve(rgb, 1), prepared, 1.0) == []


def test_tiny_face_is_left_to_super_resolution_with_a_reason(empty_stage):
    tiny = astronaut_face(40)  # the face is ~12 px
    events: list[tuple[str, int, int]] = []
    prepared = empty_stage.prepare(tiny, RestoreOptions(min_face_size=16), lambda *e: events.append(e))
    assert len(prepared.faces) == 1
    reason = prepared.faces[0].reason
    assert "below min_face_size 16 px" in reason and "left to the super-resolution model" in reason
    assert ("faces-detect", 1, 1) in events


def test_unknown_or_opt_in_face_models_give_reasons_not_crashes(empty_stage, tmp_path):
    rgb = astronaut_face()
    unknown = empty_stage.prepare(rgb, RestoreOptions(face_model="GFPGANv9"))
    assert "GFPGANv9" in unknown.faces[0].reason
    codeformer = empty_stage.prepare(rgb, RestoreOptions(face_model="CodeFormer"))
    assert "codeformer.pth" in codeformer.faces[0].reason  # non-commercial: only ever when asked for
    (tmp_path / "weights" / "codeformer.pth").write_bytes(b"\0" * 64)
    without_package = empty_stage.prepare(rgb, RestoreOptions(face_model="CodeFormer"))
    try:
        import spandrel_extra_arches  # noqa: F401
    except ImportError:
        assert "spandrel_extra_arches" in without_package.faces[0].reason
    else:
        assert without_package.faces[0].reason.startswith("face restoration unavailable")


# -- determinism and backends on small networks -----------------------------------------------------------


class RecordingFaceNet:
    """Stands in for a spandrel face network: records how it is called, returns its input."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float, dict[str, object]]] = []

    def eval(self) -> RecordingFaceNet:
        return self

    def __call__(self, x, **kwargs):
        self.calls.append((float(x.min()), float(x.max()), kwargs))
        return (x, None)


@pytest.mark.parametrize(
    ("arch", "expected_kwargs"),
    [
        ("GFPGAN", {"return_rgb": False, "randomize_noise": False}),
        ("CodeFormer", {"weight": 0.7}),  # spandrel_extra_arches' name for CodeFormer's fidelity
        ("RestoreFormer", {}),
    ],
)
def test_face_networks_get_signed_input_and_their_own_keywords(arch, expected_kwargs):
    import torch

    net = RecordingFaceNet()
    wrapped = face_module(types.SimpleNamespace(model=net), arch, 0.7)
    x = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8)
    y = wrapped(x)
    (low, high, kwargs) = net.calls[0]
    assert (low, high) == (-1.0, 1.0)  # the [-1, 1] pitfall: never the [0, 1] image itself
    assert kwargs == expected_kwargs
    assert torch.allclose(y, x, atol=1e-6)  # and mapped back to [0, 1]


@pytest.mark.slow
def test_gfpgan_wrapper_is_deterministic_although_stylegan_noise_is_random():
    import torch

    net = random_gfpgan(seed=1, narrow=0.125)  # the real architecture, ~50x cheaper
    x = torch.rand(1, 3, 512, 512)
    with torch.inference_mode():
        random_a = net(x * 2 - 1, return_rgb=False)[0]
        random_b = net(x * 2 - 1, return_rgb=False)[0]
        assert not torch.equal(random_a, random_b)  # the reference's default: new noise every call
        wrapped = face_module(types.SimpleNamespace(model=net), "GFPGAN", 0.0)
        first, second = wrapped(x), wrapped(x)
    assert torch.equal(first, second)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_openvino_face_runner_runs_the_saved_ir_like_torch(tmp_path):
    import torch

    from pipeline.backends.ir import save_ir, torch_to_ov

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid()).eval()
    xml = tmp_path / "openvino" / "ir" / "face-tiny.xml"
    save_ir(torch_to_ov(module, [1, 3, 512, 512], [1, 3, 512, 512], trace=False), xml)
    engine = EngineConfig(cache_dir=str(tmp_path), threads=1)
    info = BackendInfo("openvino", "cpu", "fp32", "test")
    crop = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    out = OpenVinoFaceRunner(xml, info, engine)(crop)
    with torch.inference_mode():
        expected = module(torch.from_numpy(crop.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
    assert np.abs(out - expected).max() < 1e-4
    assert sorted(p.name for p in xml.parent.iterdir()) == ["face-tiny.bin", "face-tiny.xml"]  # no temp left


# -- with a full-size random GFPGAN (slow) -----------------------------------------------------------------


@pytest.mark.slow
def test_random_gfpgan_loads_like_the_real_file_restores_and_pastes(gfpgan_stage):
    options = RestoreOptions()
    restorer, reason = gfpgan_stage.restorer(options)
    assert reason is None and restorer.model_id == "GFPGANv1.4"  # "auto" picked it from weights/
    rgb = astronaut_face()
    events: list[tuple[str, int, int]] = []
    prepared = gfpgan_stage.prepare(rgb, options, lambda *e: events.append(e))
    assert prepared.model == "GFPGANv1.4" and prepared.backend == "torch cpu fp32"
    assert ("faces-restore", 1, 1) in events and prepared.seconds["faces-restore"] > 0
    assert prepared.seconds["faces-load"] > 0  # the network load is not counted as restore time
    (face,) = prepared.faces
    assert face.restored.shape == (512, 512, 3) and face.restored.dtype == np.float32

    output = super_resolve(rgb, 4)
    before = output.copy()
    (report,) = gfpgan_stage.paste(output, prepared, 4.0)
    assert report.restored is True and report.reason is None
    changed = (output != before).any(axis=-1)
    support = mask_support(prepared, output.shape, 4.0)
    assert changed.sum() > 100 * 100  # the face really was replaced
    assert not (changed & ~support).any()  # pixels outside the face mask: byte-identical
    assert np.array_equal(output[~support], before[~support])

    # face_strength 0 is the super-resolved face; the same prepared faces paste the same way twice.
    unchanged = before.copy()
    gfpgan_stage.paste(unchanged, PreparedFaces(prepared.faces, strength=0.0), 4.0)
    assert np.array_equal(unchanged, before)
    again = before.copy()
    gfpgan_stage.paste(again, prepared, 4.0)
    assert np.array_equal(again, output)
    assert gfpgan_stage.status()["auto_face_model"] == "GFPGANv1.4"


# -- through the Restorer (grayscale and RGBA keep their mode; SR-only pixels outside faces) --------------


def restorer_for(stage: FaceStage) -> Restorer:
    restorer = Restorer(stage._engine, upscaler_loader=lambda *_: ConvStackUpscaler(scale=2, layers=1))
    restorer._face_stage = stage  # share the already loaded random GFPGAN
    return restorer


def crop_footprints(reports: list[FaceReport], shape: tuple[int, ...]) -> np.ndarray:
    """Every pixel the 512 crop of a reported face covers in the output (a superset of its mask)."""
    covered = np.zeros(shape[:2], bool)
    for report in reports:
        matrix = similarity_to_template(np.array(report.landmarks))
        x0, y0, x1, y1 = destination_footprint(invert(matrix), (512, 512))
        covered[max(int(y0), 0) : int(np.ceil(y1)) + 1, max(int(x0), 0) : int(np.ceil(x1)) + 1] = True
    return covered


@pytest.mark.slow
def test_several_faces_in_a_grayscale_photo_are_restored_and_it_stays_gray(gfpgan_stage):
    astronaut = cv2.cvtColor(skimage.data.astronaut()[20:240, 130:350], cv2.COLOR_RGB2GRAY)
    camera = skimage.data.camera()[80:300, 120:340]
    image = Image(pixels=np.hstack([astronaut, camera]), original_mode="L")  # 440x220, two faces
    restorer = restorer_for(gfpgan_stage)
    sr_only, _ = restorer.restore(image, RestoreOptions(scale=2, faces=False))
    output, report = restorer.restore(image, RestoreOptions(scale=2))
    assert output.pixels.shape == (440, 880) and output.pixels.dtype == np.uint8
    assert [f.restored for f in report.faces] == [True, True]
    assert report.faces[0].box[2] < 440 < report.faces[1].box[0]  # left face, right face, output pixels
    assert report.stage_seconds["faces-restore"] > 0 and "faces-detect" in report.stage_seconds
    changed = output.pixels != sr_only.pixels
    assert changed[:, :440].sum() > 50 * 50 and changed[:, 440:].sum() > 50 * 50
    assert not (changed & ~crop_footprints(report.faces, output.pixels.shape)).any()


@pytest.mark.slow
def test_rgba_photo_keeps_its_alpha_and_gets_its_face_restored(gfpgan_stage):
    rgb = np.clip(np.rint(astronaut_face() * 255), 0, 255).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    image = Image(pixels=np.dstack([rgb, alpha]), original_mode="RGBA")
    restorer = restorer_for(gfpgan_stage)
    sr_only, _ = restorer.restore(image, RestoreOptions(scale=2, faces=False))
    output, report = restorer.restore(image, RestoreOptions(scale=2))
    assert output.pixels.shape == (384, 384, 4)
    assert report.colour.path == "colour"  # a colour photo: restored exactly as before this path existed
    assert np.array_equal(output.pixels[..., 3], sr_only.pixels[..., 3])  # faces never touch alpha
    assert [f.restored for f in report.faces] == [True]
    changed = (output.pixels != sr_only.pixels).any(axis=-1)
    assert changed.sum() > 60 * 60
    assert not (changed & ~crop_footprints(report.faces, output.pixels.shape)).any()


# -- black-and-white stays black-and-white: the random GFPGAN's output is coloured ---------------------------


def astronaut_face_gray() -> np.ndarray:
    face = np.clip(np.rint(astronaut_face() * 255), 0, 255).astype(np.uint8)
    return cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)


@pytest.mark.slow
def test_a_gray_photo_scanned_as_rgb_comes_back_gray_with_its_face_restored(gfpgan_stage):
    photo = jpeg(gray_as_rgb(astronaut_face_gray(), noise=4.0), 85)  # a colour scanner's noise, then JPEG
    output, report = restorer_for(gfpgan_stage).restore(Image(photo), RestoreOptions(scale=2))
    assert report.colour.path == "gray", report.colour.reason
    assert [f.restored for f in report.faces] == [True]
    assert output.pixels.shape == (384, 384, 3) and report.output_mode == "RGB 8-bit"
    pixels = output.pixels
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])


@pytest.mark.slow
def test_a_sepia_photo_keeps_its_hue_in_the_face_and_everywhere(gfpgan_stage):
    """Tolerance: the chroma-weighted mean Lab hue of the face box and of the whole image within 3 degrees
    of the input's, and 95% of pixels (those with a hue: Lab chroma >= 5) within 8 degrees. At this tone's
    chroma (~20) 3 degrees is about 1 CIE76 unit of colour difference, at the limit of what anyone sees;
    the per-pixel bound leaves room for JPEG's chroma blocks and edges where the restored luminance moved.
    The same photo forced through the colour path misses both by far (measured: 86 degrees)."""
    photo = jpeg(toned(astronaut_face_gray(), *TONES["sepia"]), 90)
    restorer = restorer_for(gfpgan_stage)
    for mode, within in (("auto", True), ("colour", False)):
        output, report = restorer.restore(Image(photo), RestoreOptions(scale=2, colour_mode=mode))
        assert report.colour.path == ("toned" if within else "colour"), report.colour.reason
        assert [f.restored for f in report.faces] == [True]
        reference = resize_to(photo, output.width, output.height)
        x0, y0, x1, y1 = (round(v) for v in report.faces[0].box)
        for where in (np.s_[y0:y1, x0:x1], np.s_[:, :]):
            expected, got = reference[where], output.pixels[where]
            mean_gap = hue_gap(mean_hue(expected), mean_hue(got))
            pixel_gap = float(np.percentile(hue_differences(expected, got), 95))
            assert (mean_gap <= 3.0 and pixel_gap <= 8.0) is within, (mode, where, mean_gap, pixel_gap)
