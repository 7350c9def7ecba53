"""`restorer restore`: real runs of the real embedded networks on tiny generated images (the fast
realesr-animevideov3 for most cases, RealESRGAN_x4plus end to end once)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from app.cli import main
from pipeline import RestoreReport

FAST = ["--model", "realesr-animevideov3", "--no-face"]


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One state dir per session: the embedded weights are converted and compiled once for all tests."""
    return tmp_path_factory.getbasetemp() / "restorer-state"


def write_photo(path: Path, size: int = 16, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(pixels).convert(mode).save(path)
    return path


def restore(args: list[str], state_dir: Path) -> int:
    return main(
        ["restore", *args, "--state-dir", str(state_dir), "--weights-dir", str(state_dir / "weights")]
    )


def test_folder_is_mirrored_recursively_junk_skipped_and_one_bad_file_does_not_stop_the_batch(
    tmp_path: Path, state_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "photos"
    write_photo(inbox / "a.jpg")
    write_photo(inbox / "trip" / "day1" / "b.png", mode="L")
    (inbox / "trip" / "broken.png").write_bytes(b"this is not a png")
    for junk in (".DS_Store", "Thumbs.db", "trip/._b.png", ".hidden/c.png", "@eaDir/a.jpg", "notes.txt"):
        (inbox / junk).parent.mkdir(parents=True, exist_ok=True)
        (inbox / junk).write_bytes(b"junk")
    report_path = tmp_path / "report.json"
    out = tmp_path / "out"

    code = restore([str(inbox), "-o", str(out), *FAST, "--report", str(report_path)], state_dir)

    assert code == 1  # one input failed
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert outputs == ["photos/a.jpg", "photos/trip/day1/b.png"]
    assert PILImage.open(out / "photos/trip/day1/b.png").mode == "L"
    assert PILImage.open(out / "photos/a.jpg").size == (64, 64)
    entries = {Path(e["input"]).name: e for e in json.loads(report_path.read_text())}
    assert set(entries) == {"a.jpg", "b.png", "broken.png"}
    good = entries["a.jpg"]
    assert good["error"] is None and good["output"] == str(out / "photos/a.jpg")
    assert good["input_size"] == [16, 16] and good["output_size"] == [64, 64]
    assert good["input_mode"] == good["output_mode"] == "RGB 8-bit"
    assert (
        good["model"] == "realesr-animevideov3" and good["backend"] and good["device"] and good["precision"]
    )
    assert good["tiles"] == 1 and good["seconds"] > 0 and good["faces"] == []
    assert entries["b.png"]["output_mode"] == "L 8-bit"
    assert good["colour"]["path"] == "colour" and entries["b.png"]["colour"]["path"] == "gray"
    bad = entries["broken.png"]
    assert bad["output"] is None and bad["error"].startswith("not an image")
    err = capsys.readouterr().err
    assert "upscale" in err and "error:" in err and "2 restored, 1 failed" in err


def test_a_gray_scan_stored_as_rgb_stays_rgb_with_equal_channels_and_the_report_says_gray(
    tmp_path: Path, state_dir: Path
) -> None:
    from tests.colour_cases import gray_as_rgb, jpeg

    gray = np.random.default_rng(1).integers(0, 256, (24, 24), dtype=np.uint8)
    photo = tmp_path / "scan.jpg"
    PILImage.fromarray(jpeg(gray_as_rgb(gray, noise=3.0), 90)).save(photo, quality=90)
    report_path = tmp_path / "r.json"
    assert (
        restore([str(photo), "-o", str(tmp_path / "out"), *FAST, "--report", str(report_path)], state_dir)
        == 0
    )
    [entry] = json.loads(report_path.read_text())
    assert entry["colour"]["path"] == "gray" and entry["colour"]["reason"].startswith("near-gray")
    assert entry["input_mode"] == entry["output_mode"] == "RGB 8-bit"
    with PILImage.open(tmp_path / "out" / "scan.jpg") as written:
        assert written.mode == "RGB" and written.size == (96, 96)
        red, green, blue = (np.asarray(band) for band in written.split())
    assert np.array_equal(red, green) and np.array_equal(green, blue)


def test_existing_output_is_never_overwritten(tmp_path: Path, state_dir: Path) -> None:
    photo = write_photo(tmp_path / "in" / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "p.png").write_bytes(b"precious")
    assert restore([str(photo), "-o", str(out), *FAST], state_dir) == 0
    assert (out / "p.png").read_bytes() == b"precious"
    assert PILImage.open(out / "p (1).png").size == (64, 64)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_format_scale_and_quality_flags(tmp_path: Path, state_dir: Path) -> None:
    photo = write_photo(tmp_path / "p.jpg")
    out = tmp_path / "out"
    args = [str(photo), "-o", str(out), *FAST, "--format", "webp", "--scale", "2.5", "--quality", "80"]
    assert restore(args, state_dir) == 0
    written = PILImage.open(out / "p.webp")
    assert written.format == "WEBP" and written.size == (40, 40)


def test_16bit_png_stays_16bit_through_the_cli(tmp_path: Path, state_dir: Path) -> None:
    import cv2

    pixels = np.random.default_rng(0).integers(0, 65536, (16, 16, 3), dtype=np.uint16)
    (tmp_path / "deep.png").write_bytes(cv2.imencode(".png", pixels)[1].tobytes())
    out = tmp_path / "out"
    assert restore([str(tmp_path / "deep.png"), "-o", str(out), *FAST], state_dir) == 0
    written = cv2.imread(str(out / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert written.dtype == np.uint16 and written.shape == (64, 64, 3)


def test_missing_input_is_reported_and_exit_is_nonzero(tmp_path: Path, state_dir: Path) -> None:
    report_path = tmp_path / "r.json"
    code = restore(
        [str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "out"), *FAST, "--report", str(report_path)],
        state_dir,
    )
    assert code == 1
    [entry] = json.loads(report_path.read_text())
    assert entry["error"] == "no such file or folder" and entry["output"] is None
    assert entry.keys() == RestoreReport().to_dict().keys()  # one report type, failed rows included


@pytest.mark.parametrize("data", [b"", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_empty_and_truncated_files_fail_cleanly(data: bytes, tmp_path: Path, state_dir: Path) -> None:
    (tmp_path / "x.png").write_bytes(data)
    report_path = tmp_path / "r.json"
    assert (
        restore(
            [str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), *FAST, "--report", str(report_path)],
            state_dir,
        )
        == 1
    )
    [entry] = json.loads(report_path.read_text())
    assert entry["error"] and "\n" not in entry["error"]


def test_invalid_settings_are_refused_with_exit_2(tmp_path: Path, state_dir: Path) -> None:
    photo = write_photo(tmp_path / "p.png")
    assert restore([str(photo), "-o", str(tmp_path / "out"), *FAST, "--scale", "0.5"], state_dir) == 2


def test_face_flags_reach_the_settings_and_are_validated(tmp_path: Path, state_dir: Path) -> None:
    photo = write_photo(tmp_path / "p.png")
    out = tmp_path / "out"
    assert restore([str(photo), "-o", str(out), *FAST, "--face-strength", "1.5"], state_dir) == 2
    args = [str(photo), "-o", str(out), *FAST, "--face-model", "GFPGANv1.3", "--face-strength", "0.5"]
    assert restore(args, state_dir) == 0 and (out / "p.png").is_file()


@pytest.mark.slow
def test_x4plus_end_to_end_through_the_console_script(tmp_path: Path, state_dir: Path) -> None:
    """The default model, faces on, the installed `restorer` script, in its own process."""
    from skimage import data

    PILImage.fromarray(data.astronaut()[::16, ::16]).save(tmp_path / "astronaut.jpg")  # 32x32
    report_path = tmp_path / "report.json"
    script = Path(sys.executable).with_name("restorer")
    command = [
        str(script),
        "restore",
        str(tmp_path / "astronaut.jpg"),
        "-o",
        str(tmp_path / "out"),
        "--report",
        str(report_path),
        "--state-dir",
        str(state_dir),
        "--weights-dir",
        str(tmp_path / "w"),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert finished.returncode == 0, finished.stderr
    [entry] = json.loads(report_path.read_text())
    assert entry["model"] == "RealESRGAN_x4plus" and entry["output_size"] == [128, 128]
    assert entry["backend"] == "openvino" and entry["tiles"] == 1 and isinstance(entry["faces"], list)
    assert PILImage.open(tmp_path / "out" / "astronaut.jpg").size == (128, 128)
    assert "[1/1]" in finished.stderr


def test_an_unexpected_error_costs_one_file_not_the_batch(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.restorer

    write_photo(tmp_path / "in" / "a.png")
    write_photo(tmp_path / "in" / "b.png", seed=1)
    real_encode = pipeline.restorer.encode_image  # what restore_bytes calls
    calls: list[int] = []

    def encode_failing_once(*args: object, **kwargs: object) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("simulated encoder bug")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(pipeline.restorer, "encode_image", encode_failing_once)
    report_path = tmp_path / "r.json"
    code = restore(
        [str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST, "--report", str(report_path)], state_dir
    )
    assert code == 1
    entries = json.loads(report_path.read_text())
    assert [e["error"] for e in entries] == ["internal error: ValueError: simulated encoder bug", None]


def test_a_chain_runs_each_model_in_turn_and_reports_every_step(tmp_path: Path, state_dir: Path) -> None:
    """The embedded realesr-animevideov3 twice (4 x 4; converted once for the session, so the chain costs
    two small restores): the second step runs on the first one's output."""
    photo = write_photo(tmp_path / "small.png", size=8)
    report_path = tmp_path / "report.json"
    chain = "realesr-animevideov3,realesr-animevideov3"
    args = [str(photo), "-o", str(tmp_path / "out"), "--model", chain, "--no-face", "--scale", "16"]
    assert restore([*args, "--report", str(report_path)], state_dir) == 0
    assert PILImage.open(tmp_path / "out" / "small.png").size == (128, 128)
    [entry] = json.loads(report_path.read_text())
    assert entry["model"] == "realesr-animevideov3 + realesr-animevideov3"
    assert entry["output_size"] == [128, 128] and entry["backend"] == "openvino"
    assert [(step["model"], step["scale"]) for step in entry["steps"]] == [("realesr-animevideov3", 4)] * 2
    assert all(step["tiles"] >= 1 and step["seconds"] > 0 for step in entry["steps"])
    assert entry["tiles"] == sum(step["tiles"] for step in entry["steps"])
