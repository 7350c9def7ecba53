"""Model files the user drops into the weights folder: detected, described, or refused with a reason.

Any .pth / .pt / .ckpt / .safetensors file directly in the weights folder that is not one of the built-in
models' files (pipeline/models.py) is looked at by spandrel: what it recognises becomes a ModelSpec with
`user=True`, id = the file's stem, the detected architecture, scale and purpose, and "licence: unknown".
Everything else is listed as refused with the reason (not a network spandrel knows, a pickle that would run
code, an inpainting or 1-channel network, an id a built-in model already has).

The folder is scanned again on every listing and lookup, so a file dropped in appears without a restart;
detecting needs torch, so it runs in a child process (`detect_main`, reading through pipeline/safe_load.py)
and only for files whose (name, size, mtime) is new: the answers are remembered in this process and in
<cache_dir>/user-models.json, so a listing that finds nothing new costs a directory listing and a stat.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.files import file_sha256, write_text_atomically
from pipeline.models import REGISTRY, USER_LICENSE, ModelSpec, Purpose
from pipeline.safe_load import MODEL_SUFFIXES
from pipeline.types import UnknownModelError

log = logging.getLogger(__name__)

DETECT_TIMEOUT_S = 600  # a child that reads a few files of up to a few hundred MB each
MEMO_FILE = "user-models-v3.json"  # bump the number when detect() answers differently
_DETECTOR_ENTRY = (
    "import sys; from pipeline.user_models import detect_main; sys.exit(detect_main(sys.argv[1:]))"
)
# A torch-free installation (the container's runtime image) cannot read model files; the converter, which
# has torch, detects them into the shared cache, where the next listing here finds them.
NEEDS_TORCH = (
    "reading model files needs torch, which is not installed here: run `restorer weights convert` where it "
    "is (container: `docker compose run --rm converter`)"
)
# A CodeFormer file (face restoration) needs the opt-in, non-commercial spandrel_extra_arches. Refused with
# this reason without it, and looked at again once the package is installed (the memo keeps no stale refusal).
NEEDS_CODEFORMER = (
    "a CodeFormer network: it needs the opt-in, non-commercial package spandrel_extra_arches "
    "(pip install spandrel_extra_arches)"
)
_CODEFORMER_KEYS = {"position_emb", "idx_pred_layer.1.weight", "ft_layers.0.self_attn.in_proj_weight"}
# spandrel's purposes -> ours. Inpainting needs a mask, which a photo restore does not have.
_PURPOSES: dict[str, Purpose] = {"SR": "upscale", "Restoration": "restore", "FaceSR": "face"}


@dataclass(frozen=True)
class Detection:
    """What the detector child found in one file (or why it refused it); remembered by (size, mtime)."""

    architecture: str = ""
    scale: int = 0
    purpose: str = ""
    refused: str = ""


@dataclass(frozen=True)
class UserModelFile:
    """One model file of the user's, as `restorer weights`, the API and the page list it."""

    path: Path
    size_bytes: int
    sha256: str
    detection: Detection
    refused: str  # "" when usable; else why not (the detector's reason, or an id clash)

    @property
    def id(self) -> str:
        return self.path.stem

    @property
    def spec(self) -> ModelSpec | None:
        if self.refused:
            return None
        found = self.detection
        return ModelSpec(
            id=self.id,
            arch=found.architecture,
            scale=found.scale,
            purpose=found.purpose,  # type: ignore[arg-type]  # one of _PURPOSES' values
            license=USER_LICENSE,
            sha256=self.sha256,
            filenames=(self.path.name,),
            source_url="",
            description=f"user file ({found.architecture} x{found.scale})",
            user=True,
        )


# (folder, name) -> ((size, mtime_ns), sha256, Detection): this process's memory of files it has looked at.
_MEMO: dict[tuple[str, str], tuple[tuple[int, int], str, Detection]] = {}


def builtin_file_names() -> set[str]:
    return {name for spec in REGISTRY.values() for name in spec.filenames}


def scan_user_models(weights_dir: Path, cache_dir: Path | None = None) -> list[UserModelFile]:
    """Every user model file in the weights folder (sorted by name), detected or refused."""
    weights_dir = Path(weights_dir)
    candidates = _candidates(weights_dir)
    stored = _read_memo(cache_dir)
    unknown: list[Path] = []
    found: dict[str, tuple[tuple[int, int], str, Detection]] = {}
    for path, stamp in candidates:
        remembered = _MEMO.get((str(weights_dir), path.name)) or stored.get(path.name)
        if remembered is not None and remembered[0] == stamp and not _stale(remembered[2]):
            found[path.name] = remembered
        else:
            unknown.append(path)
    if unknown and not torch_installed():
        # Not remembered: what the converter stores in the shared cache is seen at the next listing.
        waiting = {
            path.name: (dict(candidates)[path], "", Detection(refused=NEEDS_TORCH)) for path in unknown
        }
        _remember(weights_dir, found)
        return _with_clashes(weights_dir, candidates, {**found, **waiting})
    if unknown:
        detections = detect_in_child([path for path in unknown])
        for path in unknown:
            stamp = dict(candidates)[path]
            found[path.name] = (stamp, file_sha256(path), detections[path.name])
        _write_memo(cache_dir, {**stored, **found})
    _remember(weights_dir, found)
    return _with_clashes(weights_dir, candidates, found)


def _remember(weights_dir: Path, found: dict[str, tuple[tuple[int, int], str, Detection]]) -> None:
    for name, entry in found.items():
        _MEMO[(str(weights_dir), name)] = entry


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def _stale(detection: Detection) -> bool:
    """A remembered answer that would now differ: a CodeFormer file refused before its package came."""
    installed = importlib.util.find_spec("spandrel_extra_arches") is not None
    return detection.refused == NEEDS_CODEFORMER and installed


def _candidates(weights_dir: Path) -> list[tuple[Path, tuple[int, int]]]:
    """Regular files (no links: nothing outside the folder is read) with a model suffix, not built in."""
    if not weights_dir.is_dir():
        return []
    builtin = builtin_file_names()
    found = []
    for path in sorted(weights_dir.iterdir()):
        if path.suffix.lower() not in MODEL_SUFFIXES or path.name in builtin or path.name.startswith("."):
            continue
        try:
            stat = path.lstat()
        except OSError:
            continue
        if path.is_symlink() or not path.is_file():
            continue
        found.append((path, (stat.st_size, stat.st_mtime_ns)))
    return found


def _with_clashes(
    weights_dir: Path,
    candidates: list[tuple[Path, tuple[int, int]]],
    found: dict[str, tuple[tuple[int, int], str, Detection]],
) -> list[UserModelFile]:
    """The files as listed: an id a built-in model has, or one an earlier file already took, is refused."""
    taken: dict[str, str] = {}
    listed = []
    for path, stamp in candidates:
        _, sha, detection = found[path.name]
        refused = detection.refused
        if not refused and path.stem in REGISTRY:
            refused = f"id {path.stem} belongs to a built-in model, which wins; rename the file to use it"
        elif not refused and path.stem in taken:
            refused = f"id {path.stem} is already {taken[path.stem]}; rename one of the files"
        if not refused:
            taken[path.stem] = path.name
        listed.append(UserModelFile(path, stamp[0], sha, detection, refused))
    return listed


def user_spec(model_id: str, weights_dir: Path, cache_dir: Path | None = None) -> ModelSpec:
    """The ModelSpec of the user file named `model_id`; UnknownModelError (with the refusal's reason, or
    the ids that exist) otherwise."""
    files = scan_user_models(weights_dir, cache_dir)
    for entry in files:
        if entry.id == model_id and entry.spec is not None:
            return entry.spec
    refused = [entry for entry in files if entry.id == model_id]
    if refused:
        raise UnknownModelError(f"model {model_id}: {refused[0].path.name} was refused: {refused[0].refused}")
    users = [entry.id for entry in files if entry.spec is not None]
    known = ", ".join([*REGISTRY, *users])
    raise UnknownModelError(f"unknown model {model_id!r}; known models: {known} (see `restorer weights`)")


# -- the memo on disk ---------------------------------------------------------------------------------------


def _read_memo(cache_dir: Path | None) -> dict[str, tuple[tuple[int, int], str, Detection]]:
    if cache_dir is None:
        return {}
    try:
        raw = json.loads((Path(cache_dir) / MEMO_FILE).read_text())
        return {
            name: (
                (int(entry["size"]), int(entry["mtime_ns"])),
                str(entry["sha256"]),
                Detection(**entry["found"]),
            )
            for name, entry in raw.items()
        }
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # missing or damaged: detect again


def _write_memo(cache_dir: Path | None, entries: dict[str, tuple[tuple[int, int], str, Detection]]) -> None:
    if cache_dir is None:
        return
    data = {
        name: {"size": stamp[0], "mtime_ns": stamp[1], "sha256": sha, "found": asdict(found)}
        for name, (stamp, sha, found) in entries.items()
    }
    try:
        write_text_atomically(Path(cache_dir) / MEMO_FILE, json.dumps(data, indent=2))
    except OSError as error:  # a read-only cache only costs detecting again next time
        log.warning("cannot remember model detections in %s: %s", cache_dir, error)


# -- detecting (in a child process: it imports torch) ------------------------------------------------------


def detect_in_child(paths: list[Path], timeout_s: float = DETECT_TIMEOUT_S) -> dict[str, Detection]:
    """Detect each file in a fresh interpreter (the caller may be a torch-free worker); a child that
    crashes or hangs refuses the files it was given, with that reason, and nothing else happens."""
    command = [sys.executable, "-c", _DETECTOR_ENTRY, *[str(path) for path in paths]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {path.name: Detection(refused=f"reading it took over {timeout_s:.0f} s") for path in paths}
    try:
        answers = json.loads(done.stdout.strip().splitlines()[-1])
        return {path.name: Detection(**answers[path.name]) for path in paths}
    except (ValueError, IndexError, KeyError, TypeError):
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = f"the model reader failed ({lines[-1] if lines else f'exit code {done.returncode}'})"
        return {path.name: Detection(refused=reason) for path in paths}


def detect_main(argv: list[str]) -> int:
    """The detector child: prints one JSON line, {file name: Detection}."""
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps({Path(arg).name: asdict(detect(Path(arg))) for arg in argv}))
    return 0


def detect(path: Path) -> Detection:
    """What spandrel makes of the file (read safely), or why it is refused."""
    import spandrel

    from pipeline.safe_load import read_state_dict
    from pipeline.types import RestoreError

    try:
        state = read_state_dict(path)
    except RestoreError as error:
        return Detection(refused=str(error))
    registry = spandrel.MAIN_REGISTRY
    if state.keys() >= _CODEFORMER_KEYS:  # only a CodeFormer file pays for importing the opt-in package
        codeformer = codeformer_support()
        if codeformer is None:
            return Detection("CodeFormer", 0, "", NEEDS_CODEFORMER)
        registry = registry.copy()
        registry.add(codeformer, ignore_duplicates=True)
    try:
        descriptor = spandrel.ModelLoader(registry=registry).load_from_state_dict(state)
    except Exception as error:  # spandrel's UnsupportedModelError, or an architecture's own failure
        words = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Detection(refused=f"not a network spandrel recognises ({words})")
    return _describe(descriptor)


def codeformer_support() -> Any:
    """spandrel_extra_arches' CodeFormer (an ArchSupport), or None where the package is not installed. The
    only one of that package's architectures the pipeline loads (pipeline/weights.py), so the only one
    detected."""
    try:
        with warnings.catch_warnings():  # its import runs torch.jit.script, deprecated: not ours to fix
            warnings.filterwarnings("ignore", "`torch.jit.script`", FutureWarning)
            import spandrel_extra_arches
    except ImportError:
        return None
    return spandrel_extra_arches.EXTRA_REGISTRY.get("CodeFormer")


def _describe(descriptor: Any) -> Detection:
    architecture = descriptor.architecture.id
    purpose = _PURPOSES.get(descriptor.purpose)
    image_descriptor: Any = spandrel_image_descriptor()  # spandrel has no hints: keep descriptor un-narrowed
    if purpose is None or not isinstance(descriptor, image_descriptor):
        return Detection(
            architecture, 0, "", f"{architecture} is a {descriptor.purpose} network (needs a mask)"
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        channels = f"{descriptor.input_channels}->{descriptor.output_channels}"
        return Detection(
            architecture, 0, "", f"{architecture} works on {channels} channels; only RGB models run"
        )
    scale = int(descriptor.scale)
    if purpose == "upscale" and scale == 1:
        purpose = "restore"
    return Detection(architecture, scale, purpose)


def spandrel_image_descriptor() -> type:
    from spandrel import ImageModelDescriptor

    return ImageModelDescriptor
