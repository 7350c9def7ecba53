"""The pipeline's public data types: what goes in, what comes out, what can go wrong.

The pipeline is a library: an `Image` and `RestoreOptions` (pipeline/options.py) go in, an `Image` and a
`RestoreReport` come out. It knows nothing about jobs, folders or HTTP.

Errors form one hierarchy so callers can say what happened in words:

    RestoreError                  anything the pipeline refuses or cannot do, with a one-line message
    ├── BadImageError             the input is not a usable image (the user must fix the file)
    │   ├── EmptyFileError        zero bytes
    │   ├── NotAnImageError       wrong magic bytes / not an image at all
    │   ├── UnsupportedFormatError an image format we cannot read
    │   ├── CorruptImageError     truncated or damaged data
    │   ├── DecompressionBombError more pixels than the configured limit
    │   └── AbsurdDimensionsError zero or absurd width/height/aspect
    ├── WeightsMissingError       no usable weight file (message names the file and where to get it)
    ├── UnknownModelError         a model id the registry (pipeline/models.py) does not know
    └── BackendUnavailableError   the requested backend/device/precision cannot run here
    DeviceOutOfMemoryError        raised by a backend for one tile; the tiler splits and retries, never
                                  reaches the caller unless a 16x16 tile does not fit
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO, Literal

import numpy as np

Backend = Literal["auto", "openvino", "torch"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
OutputFormat = Literal["same", "png", "jpg", "webp", "tiff"]
# auto: a black-and-white or toned (sepia, cyanotype) photo stored as RGB is restored as gray, its own tone
# put back (pipeline/colour.py); colour: every RGB photo is restored in colour (e.g. a hand-tinted print).
ColourMode = Literal["auto", "colour"]
DEFAULT_MODEL = "RealESRGAN_x4plus"  # the one home of the default (pipeline/options.py uses it)

# on_progress(stage, done, total): stage is one of pipeline.progress.STAGE_WEIGHTS, reported in that
# order ("decode", "faces-detect", "faces-restore", "upscale", "encode"; a stage with nothing to do may
# be skipped); done/total count tiles (upscale) or faces, 0/1 -> 1/1 for single-step stages.
ProgressCallback = Callable[[str, int, int], None]


class RestoreError(Exception):
    """Base of every error the pipeline raises on purpose. str(e) is a one-line human message."""


class BadImageError(RestoreError):
    """The input file is not a usable image."""


class EmptyFileError(BadImageError):
    pass


class NotAnImageError(BadImageError):
    pass


class UnsupportedFormatError(BadImageError):
    pass


class CorruptImageError(BadImageError):
    pass


class DecompressionBombError(BadImageError):
    pass


class AbsurdDimensionsError(BadImageError):
    pass


class WeightsMissingError(RestoreError):
    pass


class UnknownModelError(RestoreError):
    pass


class BackendUnavailableError(RestoreError):
    pass


class DeviceOutOfMemoryError(Exception):
    """A backend could not fit one batch/tile in memory. Internal: the tiler splits and retries."""


@dataclass
class Image:
    """Decoded pixels plus everything we must carry to the output.

    pixels: HxWxC numpy array, C in {1, 3, 4} (gray, RGB, RGBA), dtype uint8 or uint16, upright
    (EXIF orientation already applied), RGB channel order (not OpenCV's BGR).
    """

    pixels: np.ndarray
    source_format: str = "png"  # "jpg", "png", "webp", "tiff", "bmp", "heic", "gif"
    icc_profile: bytes | None = None
    # The photo's metadata as the file held it, made true of the upright pixels (orientation 1, face
    # regions turned with the pixels); encode_image writes each in its output format's own place and
    # updates what the restore changes (pixel dimensions, Software). pipeline/metadata.py says how.
    exif: bytes | None = None  # EXIF as a TIFF structure ("II*\0..."/"MM\0*...", no "Exif\0\0" prefix)
    xmp: bytes | None = None  # the XMP packet (JPEG: the standard part)
    xmp_extended: bytes | None = None  # JPEG extended XMP (the part beyond 64 KB), reassembled
    iptc: bytes | None = None  # IPTC-IIM records (JPEG APP13 / TIFF 33723 / PNG raw profile)
    photoshop: bytes | None = None  # Photoshop image resources ("8BIM" blocks) other than the IPTC one
    notes: list[str] = field(default_factory=list)  # e.g. "GIF: first frame of 12 used", "CMYK converted"
    original_mode: str = ""  # PIL mode of the file as read, e.g. "RGB", "I;16", "P", "CMYK", "LA"

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says (pipeline.probe): format ("jpg", "png", ...: a key of FORMAT_EXTENSIONS),
    upright size (orientation applied, as load_image would return it) and the PIL mode as stored."""

    format: str
    width: int
    height: int
    mode: str


@dataclass(frozen=True)
class EngineConfig:
    """How to run networks on this machine. Chosen once per process; models are loaded once."""

    weights_dir: str = "weights"
    cache_dir: str = "var/state/cache"  # converted embedded weights, compiled OpenVINO models
    backend: Backend = "auto"
    device: Device = "auto"
    precision: Precision = "auto"
    tile: int | None = None  # None: derived from free memory; a number caps the tile edge (input pixels)
    threads: int | None = None  # None: the cores this process may use (os.sched_getaffinity)
    # Where outputs too big for memory are assembled and encoded (unlinked files only; local disk, not
    # tmpfs, which is memory). None: the system's temp folder. The daemon and the CLI pass state_dir/scratch.
    scratch_dir: str | None = None


@dataclass
class FaceReport:
    box: list[float]  # x0, y0, x1, y1 in OUTPUT pixel coordinates
    score: float
    # 5 points (left eye, right eye, nose, mouth left, mouth right) in output coordinates
    landmarks: list[list[float]]
    restored: bool
    reason: str | None = None  # why not restored, in words


@dataclass
class ColourReport:
    """Which colour path the image took (pipeline/colour.py) and the numbers that chose it.

    path: "colour" (restored in colour, as always), "gray" (one luminance channel restored; an RGB file is
    written back as RGB with exactly equal channels) or "toned" (luminance restored as gray, colour rebuilt
    from the photo's own chroma, so a face gets the photo's tone, never the face network's skin colour).
    The numbers are measured on a small blurred copy, in 8-bit units of YCbCr chroma (hypot(Cb, Cr));
    None when not measured (a file stored as grayscale)."""

    path: Literal["colour", "gray", "toned"]
    reason: str
    chroma_p99: float | None = None
    chroma_p999: float | None = None
    tone_residual_p95: float | None = None  # chroma left once the tone (chroma as a function of Y) is taken
    hue_degrees: float | None = None  # the tone's mean hue, angle in the CbCr plane (0 = +Cb, blue)
    hue_spread_degrees: float | None = None  # circular spread of hue, weighted by chroma


@dataclass
class StepReport:
    """One model that ran, in order: each of the chain (its tiles are counted in the report's total), then
    the face model when one restored faces (pasted last, into the final result)."""

    model: str
    scale: int  # the network's own factor (a face model: 1)
    tiles: int = 0
    tile_size: int | None = None
    seconds: float = 0.0
    kind: Literal["upscale", "face"] = "upscale"


@dataclass
class RestoreReport:
    """One image's account of what happened. `to_dict()` is what reports, the DB and the API show."""

    input: str | None = None
    output: str | None = None
    error: str | None = None
    input_size: list[int] | None = None  # [width, height]
    input_mode: str | None = None  # e.g. "RGB 8-bit", "RGBA 16-bit", "L 8-bit"
    output_size: list[int] | None = None
    output_mode: str | None = None
    model: str | None = None  # the chain's ids joined by " + " (one id for one model)
    scale: float | None = None
    steps: list[StepReport] = field(default_factory=list)  # each model of the chain, in order
    backend: str | None = None
    device: str | None = None
    precision: str | None = None
    backend_reason: str | None = None  # why auto picked what it picked
    tiles: int = 0
    tile_size: int | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    faces: list[FaceReport] = field(default_factory=list)
    colour: ColourReport | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoredFile:
    """One restored file (pipeline.restore_bytes): the encoded output ready to publish, its format and the
    extension to name it with, and the image's report.

    The output is `data` (bytes in memory), or, for an output assembled on disk, `file`: an open, unlinked
    temporary file holding it from offset 0 (data is then empty). The receiver copies it and closes it;
    nothing is left on disk either way."""

    data: bytes
    format: str  # "png", "jpg", "webp" or "tiff"
    extension: str  # ".png", ".jpg", ".webp", ".tif"
    report: RestoreReport
    file: BinaryIO | None = None

    @property
    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size if self.file is not None else len(self.data)

    def read_bytes(self) -> bytes:
        """The whole output in memory (for a receiver that needs bytes, e.g. across a Ray call)."""
        if self.file is None:
            return self.data
        self.file.seek(0)
        return self.file.read()
