"""Neural Image Restore pipeline: a library, image in -> image + report out.

The public surface (everything else is private to the package):

    load_image, encode_image, output_format_for, FORMAT_EXTENSIONS     image I/O (pipeline.imageio)
    Restorer                                                           the restore flow (pipeline.restorer)
    upscale_tiled                                                      seam-free tiling (pipeline.tiling)
    Image, EngineConfig, RestoreOptions, RestoreReport, FaceReport,    data types and the error
    ProgressCallback and the RestoreError hierarchy                    hierarchy (pipeline.types)

Heavy modules (torch, openvino, the face networks) load only when a Restorer first needs them.
"""

from pipeline.imageio import FORMAT_EXTENSIONS, encode_image, load_image, output_format_for
from pipeline.restorer import Restorer
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
    NotAnImageError,
    ProgressCallback,
    RestoreError,
    RestoreOptions,
    RestoreReport,
    UnsupportedFormatError,
    WeightsMissingError,
)

__all__ = [
    "FORMAT_EXTENSIONS",
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
    "NotAnImageError",
    "ProgressCallback",
    "RestoreError",
    "RestoreOptions",
    "RestoreReport",
    "Restorer",
    "UnsupportedFormatError",
    "WeightsMissingError",
    "encode_image",
    "load_image",
    "output_format_for",
    "upscale_tiled",
]
