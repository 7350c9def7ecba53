"""Neural Image Restore pipeline: a library, image in -> image + report out.

The public surface; daemon and app import only these names (an import-linter contract in pyproject.toml
holds them to it), everything else is private to the package:

    restore_bytes -> RestoredFile        one file: decode, restore, encode (worker, CLI, bench, Ray actor)
    Restorer                             loads the networks once, then restores Images
    STAGE_WEIGHTS, stage_spans           the progress stages in the order they run, for progress bars
    probe -> ImageInfo                   header-only checks, exactly load_image's (daemon's admission)
    load_image, Image                    decoding a file
    FORMAT_EXTENSIONS, INPUT_EXTENSIONS  extensions written per format / read from folders
    SUFFIX_FORMATS, MEDIA_TYPES          the one list of image suffixes (with their format), media types
    RestoreOptions, EngineConfig,        what to do and how to run it, the default model and the choices
    DEFAULT_MODEL, Backend, Device,      settings offer; RestoreOptionFields: the options declared once
    Precision, OutputFormat, ColourMode  (daemon's Settings and presets are made from them)
    RestoreOptionFields
    MIN_TILE                             the smallest tile edge (the `tile` setting's lower bound)
    ProgressCallback, RestoreReport,     progress and the per-image account (one StepReport per model
    StepReport                           of the chain)
    RestoreError and its subclasses      what can go wrong, in words
    model_statuses, ModelStatus,         the model registry and what is installed (`restorer weights`,
    get_spec, ModelSpec                  the health page); works without torch
    convert_ahead                        a model's OpenVINO IR made now (`restorer weights convert`)

pipeline.evaluation (quality metrics, degradations, `restorer bench`) is a separate toolkit with its own
surface. Heavy modules (openvino, torch only where a conversion or the torch backend needs it, the face
networks) load when a Restorer first needs them.
"""

from pipeline.imageio import (
    FORMAT_EXTENSIONS,
    INPUT_EXTENSIONS,
    MEDIA_TYPES,
    SUFFIX_FORMATS,
    load_image,
    probe,
)
from pipeline.models import ModelSpec, get_spec
from pipeline.options import RestoreOptionFields, RestoreOptions, models_as_model
from pipeline.prebuilt import convert_ahead
from pipeline.progress import STAGE_WEIGHTS, stage_spans
from pipeline.restorer import Restorer, restore_bytes
from pipeline.tiling import MIN_TILE
from pipeline.types import (
    DEFAULT_MODEL,
    AbsurdDimensionsError,
    Backend,
    BackendUnavailableError,
    BadImageError,
    ColourMode,
    CorruptImageError,
    DecompressionBombError,
    Device,
    DeviceOutOfMemoryError,
    EmptyFileError,
    EngineConfig,
    Image,
    ImageInfo,
    NotAnImageError,
    OutputFormat,
    Precision,
    ProgressCallback,
    RestoredFile,
    RestoreError,
    RestoreReport,
    StepReport,
    UnknownModelError,
    UnsupportedFormatError,
    WeightsMissingError,
)
from pipeline.weights import ModelStatus, model_statuses

__all__ = [
    "DEFAULT_MODEL",
    "FORMAT_EXTENSIONS",
    "INPUT_EXTENSIONS",
    "MEDIA_TYPES",
    "MIN_TILE",
    "STAGE_WEIGHTS",
    "SUFFIX_FORMATS",
    "AbsurdDimensionsError",
    "Backend",
    "BackendUnavailableError",
    "BadImageError",
    "ColourMode",
    "CorruptImageError",
    "DecompressionBombError",
    "Device",
    "DeviceOutOfMemoryError",
    "EmptyFileError",
    "EngineConfig",
    "Image",
    "ImageInfo",
    "ModelSpec",
    "ModelStatus",
    "NotAnImageError",
    "OutputFormat",
    "Precision",
    "ProgressCallback",
    "RestoreError",
    "RestoreOptionFields",
    "RestoreOptions",
    "RestoreReport",
    "RestoredFile",
    "Restorer",
    "StepReport",
    "UnknownModelError",
    "UnsupportedFormatError",
    "WeightsMissingError",
    "convert_ahead",
    "get_spec",
    "load_image",
    "model_statuses",
    "models_as_model",
    "probe",
    "restore_bytes",
    "stage_spans",
]
