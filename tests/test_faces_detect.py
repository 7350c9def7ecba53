"""Face detection on real photos that ship inside packages (skimage, matplotlib): MTCNN's own weights, run
through OpenVINO by pipeline/faces/mtcnn.py and checked against facenet-pytorch's own MTCNN."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
from PIL import Image

from pipeline.faces.detect import (
    DetectedFace,
    MtcnnDetector,
    create_detector,
    detect_faces,
    drop_duplicates,
    retinaface_unavailable_reason,
)
from pipeline.faces.mtcnn import MtcnnOpenVinoDetector, area_resize, nms


@pytest.fixture(scope="module")
def mtcnn_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mtcnn-cache")


@pytest.fixture(scope="module")
def detector(mtcnn_cache: Path) -> MtcnnOpenVinoDetector:
    return MtcnnOpenVinoDetector(mtcnn_cache, threads=2)  # converts the three nets once (own process)


@pytest.fixture(scope="module")
def reference() -> MtcnnDetector:
    return MtcnnDetector()  # facenet-pytorch's MTCNN itself


def photos() -> dict[str, np.ndarray]:
    gray_camera = skimage.data.camera()
    return {
        "astronaut": skimage.data.astronaut(),
        "camera": np.dstack([gray_camera] * 3),
        "grace_hopper": grace_hopper(),
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
    }


@pytest.mark.parametrize("name", ["astronaut", "camera", "grace_hopper", "chelsea", "coffee"])
def test_openvino_mtcnn_agrees_with_facenet_pytorch(detector, reference, name: str) -> None:
    rgb = photos()[name]
    ours = sorted(detector(rgb), key=lambda face: face.box)
    theirs = sorted(reference(rgb), key=lambda face: face.box)
    assert len(ours) == len(theirs) == (0 if name in ("chelsea", "coffee") else 1)
    for mine, official in zip(ours, theirs, strict=True):
        assert np.abs(np.subtract(mine.box, official.box)).max() < 0.5  # pixels
        assert np.abs(mine.landmarks - official.landmarks).max() < 0.5
        assert abs(mine.score - official.score) < 1e-3
    # The pipeline's use (enlarged small inputs, score floor, de-duplication) agrees as well.
    small = cv2.resize(rgb, (rgb.shape[1] // 3, rgb.shape[0] // 3), interpolation=cv2.INTER_AREA)
    ours_small = detect_faces(detector, as_float_rgb(small))
    theirs_small = detect_faces(reference, as_float_rgb(small))
    assert len(ours_small) == len(theirs_small)
    for mine, official in zip(ours_small, theirs_small, strict=True):
        assert np.abs(mine.landmarks - official.landmarks).max() < 0.5


def test_area_resize_is_torch_area_interpolation() -> None:
    import torch

    image = np.random.default_rng(0).random((37, 53, 3)) * 255
    for size in [(12, 19), (24, 24), (48, 48), (80, 101)]:  # shrinking and enlarging, uneven ratios
        expected = (
            torch.nn.functional.interpolate(
                torch.from_numpy(image.transpose(2, 0, 1))[None], size=size, mode="area"
            )[0]
            .numpy()
            .transpose(1, 2, 0)
        )
        np.testing.assert_allclose(area_resize(image, *size), expected, atol=1e-9)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2, 3]  # box 0 overlaps box 1 by IoU 0.68
    # Intersection over the smaller box: the small box inside box 1 goes too.
    assert nms(boxes, scores, 0.7, by_smaller_area=True).tolist() == [1, 2]


def as_float_rgb(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return pixels[..., :3].astype(np.float32) / 255.0


def grace_hopper() -> np.ndarray:
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle, Image.open(handle) as image:
        return np.asarray(image.convert("RGB"))


def inside(box: tuple[float, ...], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


@pytest.mark.parametrize(
    ("name", "face_centre"),
    [("astronaut", (222, 118)), ("camera", (227, 157))],
)
def test_finds_the_one_face_in_skimage_photos(detector, name, face_centre):
    faces = detect_faces(detector, as_float_rgb(getattr(skimage.data, name)()))
    assert len(faces) == 1
    face = faces[0]
    assert inside(face.box, *face_centre)
    assert face.score > 0.99
    assert face.landmarks.shape == (5, 2)
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]  # GFPGAN template order
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


def test_finds_grace_hopper(detector):
    faces = detect_faces(detector, as_float_rgb(grace_hopper()))
    assert len(faces) == 1 and inside(faces[0].box, 265, 230)


@pytest.mark.parametrize("name", ["chelsea", "coffee"])
def test_no_face_in_photos_without_people(detector, name):
    assert detect_faces(detector, as_float_rgb(getattr(skimage.data, name)())) == []


def test_small_input_is_upsampled_so_its_small_face_is_found(detector):
    small = cv2.resize(skimage.data.astronaut(), (128, 128), interpolation=cv2.INTER_AREA)
    faces = detect_faces(detector, as_float_rgb(small))
    assert len(faces) == 1
    # Coordinates come back in the small input's pixels (the face is ~22 px there).
    assert inside(faces[0].box, 222 / 4, 118 / 4) and 15 < faces[0].size < 35


def test_four_faces_tiled_are_four_faces(detector):
    astronaut = skimage.data.astronaut()[20:240, 130:330]
    camera = np.repeat(skimage.data.camera()[80:300, 130:330, None], 3, axis=2)
    hopper = cv2.resize(grace_hopper()[60:400, 110:420], (200, 220), interpolation=cv2.INTER_AREA)
    row1, row2 = np.hstack([astronaut, camera]), np.hstack([hopper, astronaut[:, ::-1]])
    faces = detect_faces(detector, as_float_rgb(np.vstack([row1, row2])))
    assert len(faces) == 4
    centres = [((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces]
    tiles = sorted((int(x // 200), int(y // 220)) for x, y in centres)
    assert tiles == [(0, 0), (0, 1), (1, 0), (1, 1)]  # one per tile


def test_overlapping_detections_of_one_face_count_once():
    box = (10.0, 10.0, 60.0, 60.0)
    landmarks = np.zeros((5, 2))
    faces = [
        DetectedFace(box, 0.97, landmarks),
        DetectedFace((12.0, 11.0, 61.0, 62.0), 0.99, landmarks),
        DetectedFace((200.0, 10.0, 250.0, 60.0), 0.98, landmarks),
    ]
    kept = drop_duplicates(faces)
    assert [f.score for f in kept] == [0.99, 0.98]


def test_retinaface_is_optional_and_says_why_it_is_not_used(tmp_path, mtcnn_cache):
    assert "detection_Resnet50_Final.pth is not in" in retinaface_unavailable_reason(tmp_path)
    (tmp_path / "detection_Resnet50_Final.pth").write_bytes(b"not really weights")
    reason = retinaface_unavailable_reason(tmp_path)
    try:
        import facexlib  # noqa: F401
    except ImportError:
        assert "facexlib is not installed" in reason
    detector, why = create_detector(tmp_path, mtcnn_cache, 1) if reason else (None, "")
    if reason:
        assert detector.name.startswith("MTCNN") and "MTCNN weights ship inside facenet-pytorch" in why
