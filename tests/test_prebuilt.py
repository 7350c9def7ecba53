"""Conversions made ahead of time (pipeline/prebuilt.py): the prebuilt cache a torch-free installation
ships is copied into a state folder's cache safely, and `restorer weights convert` makes a user file's IR
where the daemon finds it without converting. The image itself is tested by `make docker-test` (torch not
importable there, a photo restored from the prebuilt IR, a user file converted by the converter service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import main as cli_main
from pipeline import BackendUnavailableError, EngineConfig
from pipeline.backends import upscaler_xml
from pipeline.backends.ir import read_network
from pipeline.prebuilt import seed_cache
from pipeline.weights import weights_key
from tests.test_weights import official_compact_state, save_official


def make_prebuilt(folder: Path) -> dict[str, bytes]:
    files = {
        "weights/model.safetensors": b"tensors",
        "weights/model.json": b"{}",
        "openvino/ir/net.bin": b"weights",
        "openvino/ir/net.xml": b"<net/>",
        "openvino/ir/net.json": b"{}",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def test_seed_copies_what_the_cache_lacks_and_never_overwrites(tmp_path: Path) -> None:
    prebuilt, cache = tmp_path / "prebuilt", tmp_path / "state" / "cache"
    files = make_prebuilt(prebuilt)
    (cache / "openvino" / "ir").mkdir(parents=True)
    (cache / "openvino" / "ir" / "net.xml").write_bytes(b"<already here/>")
    assert seed_cache(cache, prebuilt) == len(files) - 1
    assert (cache / "openvino" / "ir" / "net.xml").read_bytes() == b"<already here/>"
    for name, data in files.items():
        if name != "openvino/ir/net.xml":
            assert (cache / name).read_bytes() == data
    assert not [p for p in cache.rglob(".*")]  # no temporary file left behind
    # Once per process and cache: a file removed afterwards is not copied again until the next start.
    (cache / "weights" / "model.json").unlink()
    assert seed_cache(cache, prebuilt) == 0


def test_seed_without_a_prebuilt_folder_does_nothing(tmp_path: Path) -> None:
    assert seed_cache(tmp_path / "cache", tmp_path / "no-such-folder") == 0
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A user's own Compact upscaler (random, official shape), converted by the CLI once for the module."""
    root = tmp_path_factory.mktemp("convert")
    weights_dir, state_dir = root / "weights", root / "state"
    save_official(weights_dir / "realesr-general-x4v3.pth", official_compact_state(32, seed=3))
    args = ["weights", "convert", "--weights-dir", str(weights_dir), "--state-dir", str(state_dir)]
    code = cli_main(args)
    return weights_dir, state_dir, str(code)


def test_weights_convert_makes_the_ir_the_daemon_reads(converted) -> None:
    weights_dir, state_dir, code = converted
    assert code == "0"
    cache = state_dir / "cache"
    key = weights_key("realesr-general-x4v3", weights_dir, cache)
    assert key is not None
    xml = upscaler_xml("realesr-general-x4v3", weights_dir, cache, key)
    network = read_network(xml)  # exactly where upscaler_ir looks before it would convert
    assert network is not None and network.architecture == "Compact" and network.scale == 4


def test_weights_convert_names_a_missing_model(tmp_path: Path, capsys) -> None:
    args = [
        "weights",
        "convert",
        "GFPGANv1.4",
        "--weights-dir",
        str(tmp_path / "w"),
        "--state-dir",
        str(tmp_path),
    ]
    assert cli_main(args) == 1
    assert "GFPGANv1.4.pth" in capsys.readouterr().err


def test_weights_convert_makes_the_face_detectors_ir(tmp_path: Path) -> None:
    """MTCNN through the converter process as the image build and `restorer weights convert MTCNN` ask
    for it: the child must load the module that registers the "mtcnn" kind (it once did not)."""
    from pipeline.faces.mtcnn import mtcnn_xmls

    args = ["weights", "convert", "MTCNN", "--weights-dir", str(tmp_path / "w"), "--state-dir", str(tmp_path)]
    assert cli_main(args) == 0
    assert all(read_network(xml) is not None for xml in mtcnn_xmls(tmp_path / "cache").values())


def test_weights_convert_refuses_an_unknown_name(tmp_path: Path, capsys) -> None:
    assert cli_main(["weights", "convert", "nonsense", "--state-dir", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_the_daemon_finds_the_converted_ir_without_converting_again(converted) -> None:
    """upscaler_ir, as the worker calls it, returns the CLI's IR (no second conversion: nothing changes)."""
    from pipeline.backends import upscaler_ir

    weights_dir, state_dir, _ = converted
    engine = EngineConfig(weights_dir=str(weights_dir), cache_dir=str(state_dir / "cache"))
    before = {p: p.stat().st_mtime_ns for p in (state_dir / "cache" / "openvino" / "ir").iterdir()}
    network = upscaler_ir("realesr-general-x4v3", engine)
    assert network.xml in before
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_cache_that_cannot_take_the_files_fails_with_the_reason(tmp_path: Path) -> None:
    """Not a crash, and not the later "needs torch" that would send the user the wrong way."""
    prebuilt, cache = tmp_path / "prebuilt", tmp_path / "cache"
    make_prebuilt(prebuilt)
    cache.mkdir()
    (cache / "weights").write_text("a file where the folder belongs")
    with pytest.raises(BackendUnavailableError, match=r"prebuilt model\.safetensors into .* failed"):
        seed_cache(cache, prebuilt)
