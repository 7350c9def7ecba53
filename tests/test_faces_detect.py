"""Face detection on real photos that ship inside packages (skimage, matplotlib): MTCNN's own weights."""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def detector() -> MtcnnDetector:
    return MtcnnDetector()


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


def test_retinaface_is_optional_and_says_why_it_is_not_used(tmp_path):
    assert "detection_Resnet50_Final.pth is not in" in retinaface_unavailable_reason(tmp_path)
    (tmp_path / "detection_Resnet50_Final.pth").write_bytes(b"not really weights")
    reason = retinaface_unavailable_reason(tmp_path)
    try:
        import facexlib  # noqa: F401
    except ImportError:
        assert "facexlib is not installed" in reason
    detector, why = create_detector(tmp_path) if reason else (None, "")
    if reason:
        assert detector.name.startswith("MTCNN") and "MTCNN weights ship inside facenet-pytorch" in why
