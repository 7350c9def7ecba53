"""Issue 22: any model file spandrel recognises is a model; files that would run code are refused.

Randomly initialised tiny networks of eight architectures (tests/user_model_files.py), saved as real files
are (.pth bare, wrapped in params / params_ema, and half-precision .safetensors), sit in ONE weights folder
with ONE cache for the whole module: each is detected (`restorer weights`), converted once to OpenVINO IR
and restores a 24x20 photo through `restorer restore`, then through one `restorer serve` that restores a
photo per model through presets, reusing the same IR. Crafted pickles whose loading would create a marker
file lie in the folder from the start and are dropped in while the daemon runs: the marker never appears.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import user_models
from pipeline.tiling import SizeNeeds, pad_for_network, upscale_tiled
from tests.support.paths import REPO
from tests.support.site import running_serve
from tests.support.waiting import wait_for
from tests.user_model_files import USER_MODELS, UserModel, write_malicious_files, write_model

RESTORER = Path(sys.executable).parent / "restorer"
WIDTH, HEIGHT = 24, 20
BY_ID = {model.id: model for model in USER_MODELS}


class Folders:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.weights = root / "weights"
        self.state = root / "state"
        self.marker = root / "MARKER-code-ran"
        self.photo = root / "photo.png"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    found = Folders(tmp_path_factory.mktemp("user-models"))
    found.weights.mkdir()
    for model in USER_MODELS:
        write_model(model, found.weights)
    write_malicious_files(found.weights, found.marker)
    (found.weights / "garbage.safetensors").write_bytes(b"not a model at all")
    # An id a built-in model has (not one of its accepted file names): the built-in wins.
    shutil.copy(found.weights / "tiny-compact-4x.pth", found.weights / "RealESRGAN_x2plus.ckpt")
    (found.weights / "linked.pth").symlink_to(found.weights / "tiny-compact-4x.pth")  # never followed
    pixels = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(found.photo)
    return found


def restorer(folders: Folders, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESTORER_THREADS": "1"}
    common = ["--weights-dir", str(folders.weights), "--state-dir", str(folders.state)]
    command = [str(RESTORER), *argv[:1], *common, *argv[1:]]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200, check=False)


def listing(folders: Folders) -> list[dict[str, object]]:
    done = restorer(folders, "weights", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def ir_files(folders: Folders) -> dict[str, int]:
    """The dynamic IRs in the cache and their mtimes (a reconversion would change them)."""
    folder = folders.state / "cache" / "openvino" / "ir"
    return {xml.name: xml.stat().st_mtime_ns for xml in folder.glob("*-dynamic.xml")}


def test_every_user_file_is_listed_detected_or_refused_and_no_pickle_code_runs(folders: Folders) -> None:
    entries = listing(folders)
    models = {entry["id"]: entry for entry in entries if entry["user"]}
    for model in USER_MODELS:
        entry = models[model.id]
        assert entry["state"] == "available", entry
        assert (entry["arch"], entry["scale"], entry["purpose"]) == (
            model.architecture,
            model.scale,
            model.purpose,
        )
        assert entry["license"] == "unknown (user file)" and entry["user"] is True
        path = folders.weights / model.file_name
        assert entry["size_bytes"] == path.stat().st_size
        assert entry["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert "would call posix.system" in str(models["evil-system"]["reason"])
    assert "would call exec" in str(models["evil-exec"]["reason"])
    assert models["evil-system"]["state"] == models["evil-exec"]["state"] == "refused"
    assert "cannot be read as weights" in str(models["garbage"]["reason"])
    # The built-in keeps its id; the user's file of that name is refused, saying so.
    clash = [entry for entry in entries if entry["id"] == "RealESRGAN_x2plus"]
    assert [(entry["user"], entry["state"]) for entry in clash] == [(False, "missing"), (True, "refused")]
    assert "belongs to a built-in model, which wins" in str(clash[1]["reason"])
    assert "linked" not in models
    assert not folders.marker.exists()
    # The table says the same in words.
    table = restorer(folders, "weights").stdout
    assert "licence: unknown (user file)" in table and "a pickle that runs code" in table


@pytest.mark.parametrize("model", USER_MODELS, ids=lambda model: model.id)
def test_each_architecture_converts_once_and_restores_through_the_cli(
    folders: Folders, model: UserModel
) -> None:
    out = folders.root / f"cli-{model.id}"
    flags = [
        "--model",
        model.id,
        "--scale",
        str(model.scale),
        "--no-face",
        "--report",
        str(out / "report.json"),
    ]
    done = restorer(folders, "restore", str(folders.photo), "-o", str(out), *flags)
    assert done.returncode == 0, done.stdout + done.stderr
    with Image.open(out / "photo.png") as restored:
        assert restored.size == (WIDTH * model.scale, HEIGHT * model.scale)
    report = json.loads((out / "report.json").read_text())
    assert report[0]["backend"] == "openvino" and report[0]["model"] == model.id, report
    assert any(name.startswith(f"{model.architecture}-") for name in ir_files(folders))


@pytest.fixture
def served(folders: Folders) -> Iterator[object]:
    presets = {model.id: {"model": model.id, "scale": model.scale, "faces": False} for model in USER_MODELS}
    env = {
        "RESTORER_WEIGHTS_DIR": str(folders.weights),
        "RESTORER_STATE_DIR": str(folders.state),  # the CLI's: its cache holds the conversions to reuse
        "RESTORER_PRESETS": json.dumps(presets),
        "RESTORER_MODEL": "tiny-compact-4x",
    }
    (folders.root / "serve").mkdir(exist_ok=True)
    with running_serve(folders.root / "serve", env, timeout=600) as site:
        yield site


@pytest.mark.timeout(1800)  # alone (no CLI run before it) it converts all eight: minutes on 2 busy cores
def test_one_daemon_restores_with_every_user_model_and_sees_files_dropped_in_while_running(
    folders: Folders, served: object
) -> None:
    site = served
    converted = ir_files(folders)  # by the CLI test, when it ran first: the daemon must reuse them
    inbox, outbox = site.settings.inbox, site.settings.outbox  # type: ignore[attr-defined]
    for model in USER_MODELS:
        (inbox / model.id).mkdir(parents=True, exist_ok=True)
        shutil.copy(folders.photo, inbox / model.id / "photo.png")
    expected = {model.id: (WIDTH * model.scale, HEIGHT * model.scale) for model in USER_MODELS}
    outputs = {model.id: outbox / model.id / "photo.png" for model in USER_MODELS}
    wait_for(lambda: all(path.exists() for path in outputs.values()), timeout=900, interval=0.5)
    for model_id, path in outputs.items():
        with Image.open(path) as restored:
            assert restored.size == expected[model_id], model_id
    after = ir_files(folders)
    assert {name: after[name] for name in converted} == converted, "the daemon converted the CLI's IR again"
    for model in USER_MODELS:
        assert any(name.startswith(f"{model.architecture}-") for name in after), model.id

    # Dropped in while the daemon runs: a new model and two more crafted pickles, seen without a restart.
    shutil.copy(folders.weights / "tiny-compact-4x.pth", folders.weights / "late-compact-4x.pth")
    late_evil = folders.root / "late"
    late_evil.mkdir()
    for path in write_malicious_files(late_evil, folders.marker):
        shutil.copy(path, folders.weights / f"late-{path.name}")
    http = site.http  # type: ignore[attr-defined]
    capabilities = http.get(site.api + "/api/v1/capabilities", timeout=600).json()  # type: ignore[attr-defined]
    models = {entry["id"]: entry for entry in capabilities["models"]}
    assert (
        models["late-compact-4x"]["state"] == "available" and models["late-compact-4x"]["arch"] == "Compact"
    )
    assert "would call posix.system" in models["late-evil-system"]["reason"]
    assert "would call exec" in models["late-evil-exec"]["reason"]
    assert models["tiny-swinir-2x"]["sha256"] and models["tiny-swinir-2x"]["scale"] == 2
    assert http.get(site.api + "/api/v1/health", timeout=10).status_code == 200  # type: ignore[attr-defined]
    assert not folders.marker.exists()


# -- tiling for every scale and size need (pure numpy, no network) ------------------------------------------


class _Nearest:
    """A stand-in network: nearest-neighbour x`scale` that insists on its size needs, as a window
    transformer does, and records the shapes it was given."""

    def __init__(self, scale: int, needs: SizeNeeds) -> None:
        self.scale, self.batch_size = scale, 1
        self.size_multiple, self.size_minimum, self.size_square = needs.multiple, needs.minimum, needs.square
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        height, width = batch.shape[2:]
        assert height % self.size_multiple == 0 and width % self.size_multiple == 0
        assert min(height, width) >= self.size_minimum and (height == width or not self.size_square)
        self.shapes.append((height, width))
        return batch.repeat(self.scale, axis=2).repeat(self.scale, axis=3)


@pytest.mark.parametrize("scale", [1, 2, 4, 8])
@pytest.mark.parametrize("needs", [SizeNeeds(), SizeNeeds(8, 40), SizeNeeds(16, 0, True)], ids=str)
def test_tiles_meet_each_networks_size_needs_at_every_scale(scale: int, needs: SizeNeeds) -> None:
    image = np.random.default_rng(1).random((37, 53, 3), dtype=np.float32)
    network = _Nearest(scale, needs)
    result = upscale_tiled(image, network, tile=32, pad=4, out_dtype=np.float32, blend=2).pixels
    assert result.shape == (37 * scale, 53 * scale, 3)
    np.testing.assert_allclose(result, image.repeat(scale, axis=0).repeat(scale, axis=1), atol=1e-6)
    assert network.shapes


def test_padding_for_a_network_is_cropped_back() -> None:
    batch = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(2, 3, 5, 7)
    padded, height, width = pad_for_network(batch, SizeNeeds(4, 12, True))
    assert padded.shape == (2, 3, 12, 12) and (height, width) == (5, 7)
    np.testing.assert_array_equal(padded[:, :, :5, :7], batch)
    assert pad_for_network(batch, SizeNeeds())[0] is batch


def test_the_converter_module_imports_none_of_its_callers() -> None:
    """Issue 21 item 5: converters register by kind (pipeline.backends, pipeline.faces) and the converter
    process imports the module a Conversion names; ir.py itself imports only the layers below it."""
    import ast

    import pipeline.backends.ir as ir

    tree = ast.parse(Path(ir.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    imported |= {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    callers = [
        name
        for name in imported
        if name.startswith(("pipeline.backends", "pipeline.faces", "pipeline.weights"))
    ]
    assert callers == [], callers
    import pipeline.backends
    import pipeline.faces.mtcnn
    import pipeline.faces.restore  # noqa: F401  (each registers its converter)

    assert {"upscaler", "face", "mtcnn"} <= set(ir._CONVERTERS)


def test_without_torch_files_wait_for_the_converter_and_its_detection_is_seen_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch-free runtime image lists a new file as waiting for the converter (not remembered), and
    sees what the converter, a process with torch, detected into the shared cache at its next listing."""
    weights, cache = tmp_path / "weights", tmp_path / "cache"
    weights.mkdir()
    cache.mkdir()
    model = next(m for m in USER_MODELS if m.architecture == "Compact")
    path = write_model(model, weights)
    monkeypatch.setattr(user_models, "torch_installed", lambda: False)
    [waiting] = user_models.scan_user_models(weights, cache)
    assert waiting.refused == user_models.NEEDS_TORCH and waiting.spec is None
    converter = (
        "import sys; from pathlib import Path; from pipeline.user_models import scan_user_models; "
        "scan_user_models(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run(
        [sys.executable, "-c", converter, str(weights), str(cache)], env=env, check=True, timeout=600
    )
    [detected] = user_models.scan_user_models(weights, cache)
    assert detected.spec is not None and detected.spec.arch == "Compact" and detected.id == path.stem
