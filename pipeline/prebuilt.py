"""Conversions made ahead of time: shipped with an installation (the prebuilt cache), or now, on request.

Converting a network to OpenVINO IR imports torch (pipeline/backends/ir.py); running it does not. The
torch-free container image therefore cannot convert anything itself, so its builder stage, which has torch,
runs `pipeline.prebuilt.main`: the embedded Real-ESRGAN networks and the MTCNN face detector are
converted into `prebuilt_cache_dir()` (inside the environment, `<sys.prefix>/share/neural-image-restore/
cache`, laid out like a state directory's cache: weights/ and openvino/ir/), and the runtime image copies
that folder.

At run time, before a network is looked up, `seed_cache(cache_dir)` copies into the cache whatever it lacks
from that folder. The names carry the weights' sha256, so a file already in the cache is the same file and
is never overwritten. Each file is written under a temporary name and renamed, an IR's .bin before its .xml
and the JSON records last (the order ir.py reads as "complete"), so a start killed mid-copy leaves nothing
that reads as whole; the next start copies the rest. Compiled blobs are not shipped: they belong to the CPU
that compiles them.

`convert_ahead` makes a model's IR in a cache now, through the same converter process the worker would run
on first use (`restorer weights convert`; in a container, the converter image, which has torch, writing
into the state volume the torch-free daemon reads).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.files import atomic_target
from pipeline.models import REGISTRY, get_spec
from pipeline.types import BackendUnavailableError

if TYPE_CHECKING:
    from pipeline.options import RestoreOptions
    from pipeline.types import EngineConfig

log = logging.getLogger(__name__)

_SEEDED: set[Path] = set()  # cache folders this process has seeded already
# Copy order inside one network's files: data first, the .xml that marks an IR complete next, the JSON
# records that make it usable last.
_ORDER = {".xml": 1, ".json": 2}


def prebuilt_cache_dir() -> Path:
    return Path(sys.prefix) / "share" / "neural-image-restore" / "cache"


def embedded_model_ids() -> list[str]:
    return [spec.id for spec in REGISTRY.values() if spec.embedded]


def seed_cache(cache_dir: Path | str, prebuilt: Path | None = None) -> int:
    """Copy the prebuilt files the cache lacks into it; the number copied (0 without a prebuilt folder).
    Once per cache folder and process: later calls cost nothing."""
    source = prebuilt or prebuilt_cache_dir()
    target = Path(cache_dir)
    if target.resolve() in _SEEDED or not source.is_dir():
        return 0
    files = sorted((p for p in source.rglob("*") if p.is_file()), key=lambda p: (_ORDER.get(p.suffix, 0), p))
    copied = 0
    for path in files:
        destination = target / path.relative_to(source)
        if destination.exists():
            continue
        try:
            with atomic_target(destination) as temporary:
                shutil.copyfile(path, temporary)
        except OSError as error:  # a full disk, a cache folder of another user: the job says which
            message = f"copying the prebuilt {path.name} into {target} failed: {error}"
            raise BackendUnavailableError(message) from error
        copied += 1
    if copied:
        log.info("copied %d prebuilt conversion files from %s into %s", copied, source, target)
    _SEEDED.add(target.resolve())
    return copied


def convert_ahead(model_id: str, engine: EngineConfig, options: RestoreOptions) -> str:
    """Convert `model_id`'s weights to IR in engine.cache_dir unless they are already there (in the
    converter process: needs torch); the IR file's name. "MTCNN" is the face detector. Raises the
    pipeline's errors (WeightsMissingError, BackendUnavailableError) with what to do."""
    from pipeline.backends import upscaler_ir

    seed_cache(engine.cache_dir)
    if model_id == "MTCNN":
        return _mtcnn_ir(Path(engine.cache_dir))
    spec = get_spec(model_id, engine.weights_dir, engine.cache_dir)  # a user file of the weights folder too
    if spec.purpose == "face":
        from pipeline.faces.restore import face_fidelity, face_ir

        return face_ir(model_id, engine, face_fidelity(spec, options.codeformer_fidelity)).name
    strength = options.denoise_strength if model_id in options.model else None
    return upscaler_ir(model_id, engine, strength).xml.name


def _mtcnn_ir(cache_dir: Path) -> str:
    from pipeline.backends.ir import Conversion, convert_in_subprocess, read_network
    from pipeline.faces.mtcnn import mtcnn_xmls

    xmls = mtcnn_xmls(cache_dir)
    if any(read_network(xml) is None for xml in xmls.values()):
        convert_in_subprocess(Conversion("mtcnn", cache_dir=str(cache_dir), module="pipeline.faces.mtcnn"))
    return ", ".join(xml.name for xml in xmls.values())


def build(target: Path) -> None:
    """Convert every embedded network and the MTCNN detector into `target` (needs torch: build time only),
    each in the converter process the runtime would use, then check the runtime finds each one."""
    from pipeline.backends.ir import Conversion, convert_in_subprocess, read_network

    with tempfile.TemporaryDirectory() as empty:  # no user weights: the embedded ones are converted
        for model_id in embedded_model_ids():
            job = Conversion("upscaler", model_id, empty, str(target), module="pipeline.backends")
            convert_in_subprocess(job)
            log.warning("converted %s", model_id)
        convert_in_subprocess(Conversion("mtcnn", cache_dir=str(target), module="pipeline.faces.mtcnn"))
        expected = _expected_irs(Path(empty), target)
        missing = [name for name, xml in expected.items() if read_network(xml) is None]
    if missing:
        raise RuntimeError(f"the prebuilt cache lacks {missing}")
    # Shipped for every user: readable by all (safetensors writes its files 0600, for their creator only).
    for path in target.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _expected_irs(weights_dir: Path, cache_dir: Path) -> dict[str, Path]:
    """Each prebuilt network's IR, found as the runtime finds it (no torch)."""
    from pipeline.backends import upscaler_xml
    from pipeline.faces.mtcnn import mtcnn_xmls
    from pipeline.weights import weights_key

    found: dict[str, Path] = {}
    for model_id in embedded_model_ids():
        key = weights_key(model_id, weights_dir, cache_dir)
        found[model_id] = (
            upscaler_xml(model_id, weights_dir, cache_dir, key) if key else cache_dir / f"{model_id}-missing"
        )
    return found | {f"mtcnn-{net}": xml for net, xml in mtcnn_xmls(cache_dir).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=Path, default=prebuilt_cache_dir(), help="default: %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    build(args.target)
    print(f"prebuilt conversions in {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
