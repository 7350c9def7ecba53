"""Neural Image Restore pipeline: a library, image in -> image + report out.

The public surface (everything else is private to the package):

    restore_bytes -> RestoredFile                                      one file: decode, restore, encode
    STAGE_WEIGHTS, stage_spans                                         progress stages, in run order
    probe -> ImageInfo                                                 header-only checks (load_image's)
    load_image, encode_image, output_format_for, FORMAT_EXTENSIONS     image I/O (pipeline.imageio)
    Restorer                                                           the restore flow (pipeline.restorer)
    upscale_tiled                                                      seam-free tiling (pipeline.tiling)
    Image, EngineConfig, RestoreOptions, RestoreReport, FaceReport,    data types and the error
    ProgressCallback and the RestoreError hierarchy                    hierarchy (pipeline.types)

Heavy modules (torch, openvino, the face networks) load only when a Restorer first needs them.
"""

from pipeline.imageio import FORMAT_EXTENSIONS, encode_image, load_image, output_format_for, probe
from pipeline.progress import STAGE_WEIGHTS, stage_spans
from pipeline.restorer import Restorer, restore_bytes
from pipeline.tiling import upscale_tiled
from pipeline.types import (
    AbsurdDimensionsError,
    BackendUnavailableError,
    BadImageError,
    CorruptImageError,
    DecompressionBombError,
    DeviceOutOfMemoryError,
    EmptyFileError,
    EngineConfig,
    FaceReport,
    Image,
    ImageInfo,
    NotAnImageError,
    ProgressCallback,
    RestoredFile,
    RestoreError,
    RestoreOptions,
    RestoreReport,
    UnsupportedFormatError,
    WeightsMissingError,
)

__all__ = [
    "FORMAT_EXTENSIONS",
    "STAGE_WEIGHTS",
    "AbsurdDimensionsError",
    "BackendUnavailableError",
    "BadImageError",
    "CorruptImageError",
    "DecompressionBombError",
    "DeviceOutOfMemoryError",
    "EmptyFileError",
    "EngineConfig",
    "FaceReport",
    "Image",
    "ImageInfo",
    "NotAnImageError",
    "ProgressCallback",
    "RestoreError",
    "RestoreOptions",
    "RestoreReport",
    "RestoredFile",
    "Restorer",
    "UnsupportedFormatError",
    "WeightsMissingError",
    "encode_image",
    "load_image",
    "output_format_for",
    "probe",
    "restore_bytes",
    "stage_spans",
    "upscale_tiled",
]
