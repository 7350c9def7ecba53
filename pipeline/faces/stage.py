"""The face stage the Restorer runs: detect + restore on the input, paste on the super-resolved output.

Order as in the reference: detect on the input, restore each aligned face at 512, (the Restorer
super-resolves the whole image), paste faces at the output scale through the inverse transform.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.backends.base import available_cores
from pipeline.faces.align import align_face, rescale_source, similarity_to_template
from pipeline.faces.detect import (
    DetectedFace,
    FaceDetector,
    create_detector,
    detect_faces,
    retinaface_unavailable_reason,
)
from pipeline.faces.paste import face_mask_for, paste_face
from pipeline.faces.restore import (
    AUTO_ORDER,
    FaceRestorer,
    available_face_models,
    choose_face_backend,
    choose_face_model,
    face_fidelity,
    load_face_restorer,
)
from pipeline.options import RestoreOptions
from pipeline.types import (
    EngineConfig,
    FaceReport,
    ProgressCallback,
    RestoreError,
)

log = logging.getLogger(__name__)


@dataclass
class PreparedFace:
    detected: DetectedFace  # input coordinates
    matrix: np.ndarray | None = None  # input -> 512 crop
    restored: np.ndarray | None = None  # 512x512x3 float32 [0,1]
    mask: np.ndarray | None = None  # 512x512 float32 crop-space blend mask
    reason: str | None = None  # why not restored


@dataclass
class PreparedFaces:
    """What prepare() found and restored, waiting for the super-resolved image."""

    faces: list[PreparedFace] = field(default_factory=list)
    strength: float = 1.0
    model: str | None = None  # face model used, None when none ran
    backend: str | None = None  # e.g. "openvino cpu bf16"
    detector: str | None = None
    # "faces-load" (detector/network, first image only), "faces-detect", "faces-restore", "faces-paste"
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def _add_seconds(prepared: PreparedFaces, stage: str, started: float) -> None:
    prepared.seconds[stage] = prepared.seconds.get(stage, 0.0) + time.perf_counter() - started


def _progress(on_progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if on_progress is not None:
        on_progress(stage, done, total)


class FaceStage:
    """Loaded once per process; prepare()/paste() keep no per-image state on the object."""

    def __init__(self, engine: EngineConfig) -> None:
        self._engine = engine
        self._weights_dir = Path(engine.weights_dir)
        self._cache_dir = Path(engine.cache_dir)
        self._detector: FaceDetector | None = None
        self._detector_reason = ""
        self._restorers: dict[tuple[str, str | None, float], FaceRestorer] = {}

    # -- loading ------------------------------------------------------------------------------------------

    def detector(self) -> FaceDetector:
        if self._detector is None:
            threads = self._engine.threads or available_cores()
            cache_dir = Path(self._engine.cache_dir)
            self._detector, self._detector_reason = create_detector(self._weights_dir, cache_dir, threads)
        return self._detector

    def restorer(self, options: RestoreOptions) -> tuple[FaceRestorer | None, str | None]:
        """The face network for these options, or None and the reason in words."""
        spec, reason = choose_face_model(options.face_model, self._weights_dir, self._cache_dir)
        if spec is None:
            return None, reason
        fidelity = face_fidelity(spec, options.codeformer_fidelity)
        # A user's file replaced under the same name is another network: its sha256 (of the file, for a
        # user spec) is part of the key.
        key = (spec.id, spec.sha256 if spec.user else None, fidelity)
        if key not in self._restorers:
            try:
                self._restorers[key] = load_face_restorer(spec.id, self._engine, fidelity)
            except RestoreError as error:  # corrupt file, CodeFormer without its package, backend refused
                return None, f"face restoration unavailable: {error}"
        return self._restorers[key], None

    def warm_up(self, options: RestoreOptions) -> None:
        """Load the detector and the face network now (the daemon calls this before READY)."""
        if options.faces:
            self.detector()
            self.restorer(options)

    # -- per image ----------------------------------------------------------------------------------------

    def prepare(
        self, rgb: np.ndarray, options: RestoreOptions, on_progress: ProgressCallback | None = None
    ) -> PreparedFaces:
        """Detect faces on the input (HxWx3 float32 [0,1], or uint8/uint16: converted a band or a crop at
        a time, never whole) and restore each aligned 512 crop."""
        prepared = PreparedFaces(strength=float(np.clip(options.face_strength, 0.0, 1.0)))
        if not options.faces:
            return prepared
        _progress(on_progress, "faces-detect", 0, 1)
        started = time.perf_counter()
        try:
            detector = self.detector()
        except ImportError as error:  # facenet-pytorch missing from this install: SR still runs
            prepared.notes.append(
                f"face detection unavailable ({error}); install facenet-pytorch==2.6.0 with --no-deps"
            )
            return prepared
        _add_seconds(prepared, "faces-load", started)  # ~0 once warm_up() has run
        started = time.perf_counter()
        prepared.detector = detector.name
        detected = detect_faces(detector, rgb)
        prepared.seconds["faces-detect"] = time.perf_counter() - started
        _progress(on_progress, "faces-detect", 1, 1)
        prepared.faces = [PreparedFace(face) for face in detected]
        if not detected:
            return prepared

        started = time.perf_counter()
        small = [f for f in prepared.faces if f.detected.size < options.min_face_size]
        for face in small:
            face.reason = (
                f"face of {face.detected.size:.0f} px is below min_face_size {options.min_face_size} px: "
                "left to the super-resolution model"
            )
        todo = [f for f in prepared.faces if f.reason is None]
        loading = time.perf_counter()
        restorer, reason = self.restorer(options) if todo else (None, None)
        _add_seconds(prepared, "faces-load", loading)
        started += time.perf_counter() - loading  # restore time without the one-off model load
        if restorer is None:
            for face in todo:
                face.reason = reason
            todo = []
        else:
            prepared.model = restorer.model_id
            prepared.backend = f"{restorer.info.backend} {restorer.info.device} {restorer.info.precision}"
            height, width = rgb.shape[:2]
            for done, face in enumerate(todo):
                _progress(on_progress, "faces-restore", done, len(todo))
                self._restore_one(face, rgb, (width, height), restorer)
        _progress(on_progress, "faces-restore", len(todo), len(todo))
        prepared.seconds["faces-restore"] = time.perf_counter() - started
        return prepared

    @staticmethod
    def _restore_one(
        face: PreparedFace, rgb: np.ndarray, size: tuple[int, int], restorer: FaceRestorer
    ) -> None:
        try:
            matrix = similarity_to_template(face.detected.landmarks)
        except ValueError as error:
            face.reason = f"face not restored: {error}"
            return
        crop = align_face(rgb, matrix)
        try:
            face.restored = restorer(crop)
        except (RuntimeError, MemoryError, RestoreError) as error:
            # One face failing must not cost the whole image: report it and keep the SR result there.
            log.warning("face restoration failed: %s", error)
            face.reason = f"face restoration failed: {type(error).__name__}: {str(error)[:200]}"
            return
        face.matrix = matrix
        face.mask = face_mask_for(matrix, size)

    def paste(self, output: np.ndarray, prepared: PreparedFaces, scale: float) -> list[FaceReport]:
        """Paste restored faces into `output` (HxWx3 uint8|uint16, IN PLACE); reports in output coords."""
        started = time.perf_counter()
        reports = []
        for face in prepared.faces:
            restored = False
            if face.restored is not None and face.matrix is not None and face.mask is not None:
                output_to_crop = rescale_source(face.matrix, scale)
                paste_face(output, face.restored, face.mask, output_to_crop, prepared.strength)
                restored = True
            reports.append(self._report(face, scale, restored))
        if prepared.faces:
            prepared.seconds["faces-paste"] = time.perf_counter() - started
        return reports

    @staticmethod
    def _report(face: PreparedFace, scale: float, restored: bool) -> FaceReport:
        # Pixel-centre convention for points, edges for the box.
        landmarks = (face.detected.landmarks + 0.5) * scale - 0.5
        return FaceReport(
            box=[round(v * scale, 1) for v in face.detected.box],
            score=round(face.detected.score, 4),
            landmarks=[[round(float(x), 1), round(float(y), 1)] for x, y in landmarks],
            restored=restored,
            reason=None if restored else face.reason,
        )

    # -- status -------------------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """Detector and face weights available (cheap: no model is loaded; a user's file is hashed and
        detected once, then remembered). "auto" never picks a user's file; naming it as face_model does."""
        present = available_face_models(self._weights_dir, self._cache_dir)
        auto = next((m for m in AUTO_ORDER if m in present), None)
        retina = retinaface_unavailable_reason(self._weights_dir)
        try:
            backend = choose_face_backend(self._engine)
            backend_text: str | None = f"{backend.backend} {backend.device} {backend.precision}"
        except RestoreError as error:
            backend_text = f"unavailable: {error}"
        _, missing = choose_face_model("auto", self._weights_dir, self._cache_dir)
        note: str | None
        if self._detector is not None:  # loaded: say what actually runs (RetinaFace may have fallen back)
            detector, note = self._detector.name, self._detector_reason
        else:
            detector = "RetinaFace (facexlib)" if retina is None else "MTCNN"
            note = retina
        return {
            "detector": detector,
            "detector_note": note,
            "face_models_available": present,
            "auto_face_model": auto,
            "restoration_available": auto is not None,
            "reason": missing,
            "backend": backend_text,
        }
