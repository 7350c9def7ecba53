"""Face detection: boxes, scores and five landmarks (left eye, right eye, nose, mouth left, mouth right).

Default: MTCNN from facenet-pytorch, whose P/R/O-net weights ship inside the wheel (no download).
Optional: RetinaFace (facexlib's network) when facexlib is installed AND its weight file is already in
weights/; facexlib is imported lazily and its own downloader is never called.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from pipeline.tiling import as_float

log = logging.getLogger(__name__)

# Small inputs are enlarged before detection so that a face of a few pixels becomes one MTCNN finds
# (its smallest window is 12 px); large inputs are used as they are.
DETECT_TARGET_EDGE = 640
MAX_DETECT_UPSAMPLE = 4.0
MIN_SCORE = 0.95  # 0.91 was a false positive (astronaut at 128 px); real faces score > 0.99
DUPLICATE_IOU = 0.4
RETINAFACE_WEIGHTS = "detection_Resnet50_Final.pth"
RETINAFACE_SOURCE = (
    "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth"
)


@dataclass(frozen=True)
class DetectedFace:
    """One face in INPUT pixel coordinates."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks: np.ndarray  # (5, 2) x, y

    @property
    def size(self) -> float:
        """Edge of the face in pixels: the larger side of its box."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def face_box(numbers: np.ndarray) -> tuple[float, float, float, float]:
    """A detector's box row (x0, y0, x1, y1, then anything) as DetectedFace.box."""
    x0, y0, x1, y1 = (float(v) for v in numbers[:4])
    return x0, y0, x1, y1


class FaceDetector(Protocol):
    name: str

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        """Faces in an HxWx3 uint8 RGB image."""
        ...


@contextlib.contextmanager
def _quiet_legacy_warnings() -> Iterator[None]:
    # facenet-pytorch calls torch APIs that newer torch flags as deprecated; they are harmless here and
    # pytest runs with warnings as errors.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


class MtcnnDetector:
    name = "MTCNN (facenet-pytorch)"

    def __init__(self, device: str = "cpu") -> None:
        with _quiet_legacy_warnings():
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(keep_all=True, device=device, min_face_size=20)
        self._mtcnn.eval()

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        import torch

        with _quiet_legacy_warnings(), torch.inference_mode():
            boxes, scores, points = self._mtcnn.detect(np.ascontiguousarray(rgb), landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, score, landmarks in zip(boxes, scores, points, strict=True):
            faces.append(
                DetectedFace(
                    box=face_box(np.asarray(box, dtype=np.float64)),
                    score=float(score),
                    landmarks=np.asarray(landmarks, dtype=np.float64).reshape(5, 2),
                )
            )
        return faces


class RetinaFaceDetector:
    """facexlib's RetinaFace-ResNet50 with the user's weights/detection_Resnet50_Final.pth."""

    name = "RetinaFace (facexlib)"

    def __init__(self, weights_path: Path) -> None:
        import torch
        from facexlib.detection.retinaface import RetinaFace

        # facexlib picks its device itself (cuda when available); its own loader would download weights,
        # so the state dict is read from the user's file here.
        network = RetinaFace(network_name="resnet50", half=False)
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        network.load_state_dict(state, strict=True)
        self._network = network.eval()

    def __call__(self, rgb: np.ndarray) -> list[DetectedFace]:
        import torch

        bgr = np.ascontiguousarray(rgb[..., ::-1])
        with torch.inference_mode():
            rows = self._network.detect_faces(bgr, conf_threshold=0.8)
        faces = []
        for row in np.asarray(rows, dtype=np.float64).reshape(-1, 15):
            faces.append(
                DetectedFace(box=tuple(row[:4]), score=float(row[4]), landmarks=row[5:15].reshape(5, 2))
            )
        return faces


def retinaface_unavailable_reason(weights_dir: Path) -> str | None:
    """Why the optional RetinaFace detector cannot be used here (None when it can)."""
    if not (weights_dir / RETINAFACE_WEIGHTS).is_file():
        missing = f"{RETINAFACE_WEIGHTS} is not in {weights_dir}/ ({RETINAFACE_SOURCE})"
        return f"RetinaFace (optional) not used: {missing}"
    try:
        import facexlib.detection.retinaface  # noqa: F401
    except ImportError:
        return f"RetinaFace not used: {RETINAFACE_WEIGHTS} is present but facexlib is not installed"
    return None


def create_detector(weights_dir: Path, cache_dir: Path, threads: int) -> tuple[FaceDetector, str]:
    """The best detector available offline, and one line saying why it was chosen: RetinaFace when the
    user added its weights, else MTCNN: on OpenVINO (no torch at run time) when it is installed, else
    facenet-pytorch's own."""
    reason = retinaface_unavailable_reason(weights_dir)
    if reason is None:
        try:
            detector = RetinaFaceDetector(weights_dir / RETINAFACE_WEIGHTS)
            return detector, f"{RETINAFACE_WEIGHTS} found in {weights_dir}/"
        except Exception as error:  # an optional extra must never cost the face stage: say why, use MTCNN
            log.warning("RetinaFace could not be loaded: %s", error)
            reason = f"RetinaFace not used: {RETINAFACE_WEIGHTS} could not be loaded ({error})"
    why = f"{reason}; MTCNN weights ship inside facenet-pytorch"
    if importlib.util.find_spec("openvino") is None:
        return MtcnnDetector(), why
    from pipeline.faces.mtcnn import MtcnnOpenVinoDetector

    return MtcnnOpenVinoDetector(cache_dir, threads), why


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def drop_duplicates(faces: list[DetectedFace], iou: float = DUPLICATE_IOU) -> list[DetectedFace]:
    """Keep the best-scoring face of any group that overlaps more than `iou` (no face restored twice)."""
    kept: list[DetectedFace] = []
    for face in sorted(faces, key=lambda f: f.score, reverse=True):
        if all(_iou(face.box, other.box) <= iou for other in kept):
            kept.append(face)
    return kept


def detection_upsample(height: int, width: int) -> float:
    return float(np.clip(DETECT_TARGET_EDGE / max(height, width), 1.0, MAX_DETECT_UPSAMPLE))


_CONVERT_ROWS = 256  # rows converted at a time: a 100 MP scan never gets a whole float copy


def _detector_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB for the detector: the float image's values x 255, rounded (integer inputs first become
    float [0,1] exactly as pipeline.tiling.as_float makes them, a band of rows at a time)."""
    if rgb.dtype == np.uint8:
        return rgb  # x / 255 * 255 rounds back to x
    image = np.empty(rgb.shape, np.uint8)
    for first in range(0, rgb.shape[0], _CONVERT_ROWS):
        band = rgb[first : first + _CONVERT_ROWS]
        scaled = as_float(band) * np.float32(255.0)
        image[first : first + _CONVERT_ROWS] = np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled)
    return image


def detect_faces(detector: FaceDetector, rgb: np.ndarray, min_score: float = MIN_SCORE) -> list[DetectedFace]:
    """Faces in an HxWx3 image (float32 [0,1], or uint8/uint16), in its own pixel coordinates, sorted
    left to right."""
    height, width = rgb.shape[:2]
    factor = detection_upsample(height, width)
    image = _detector_input(rgb)
    if factor > 1.0:
        size = (round(width * factor), round(height * factor))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    fx, fy = image.shape[1] / width, image.shape[0] / height
    found = []
    for face in detector(image):
        if face.score < min_score:
            continue
        x0, y0, x1, y1 = face.box
        # Pixel-centre convention: x_input = (x_detect + 0.5) / f - 0.5.
        landmarks = (face.landmarks + 0.5) / np.array([fx, fy]) - 0.5
        box = (x0 / fx, y0 / fy, x1 / fx, y1 / fy)
        found.append(DetectedFace(box=box, score=face.score, landmarks=landmarks))
    return sorted(drop_duplicates(found), key=lambda f: (f.box[0], f.box[1]))
