"""Issue 22 item 5 with item 1: a face network file of the user's own is a face model like the built-in ones.

One weights folder for the module holds a tiny RestoreFormer saved as `MyFaces.pth` (spandrel detects it
from its tensors; it restores a 512 crop in about a second on torch), a CodeFormer under a non-official
name (half-precision .safetensors), an upscaler file and an unreadable one. `restorer restore --face-model
MyFaces` restores the face of a photo; the rest is checked in process against the same folder and cache
(the CLI's detections are remembered there: no second look). Cost: ~25 s, mostly the CLI's detector child
(torch's import, the 135 MB CodeFormer file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image as PILImage

from pipeline import user_models
from pipeline.faces import FaceStage
from pipeline.faces.restore import choose_face_model, face_fidelity, face_xml
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer
from pipeline.types import EngineConfig, Image, UnknownModelError
from tests.faces_support import write_random_codeformer, write_tiny_restoreformer
from tests.fake_upscalers import ConvStackUpscaler
from tests.support.paths import REPO
from tests.user_model_files import USER_MODELS, write_model

RESTORER = Path(sys.executable).parent / "restorer"
UPSCALER = USER_MODELS[0]  # tiny-esrgan-1x: a user's restore model, not a face model


class Folders:
    def __init__(self, root: Path, state: Path) -> None:
        self.root = root
        self.weights = root / "weights"
        self.state = state
        self.cache = state / "cache"
        self.photo = root / "astronaut.png"

    def engine(self) -> EngineConfig:
        return EngineConfig(weights_dir=str(self.weights), cache_dir=str(self.cache), threads=2)


def astronaut_face(size: int = 192) -> np.ndarray:
    """One face of ~60 px (uint8 RGB), as tests/test_faces_stage.py uses."""
    crop = skimage.data.astronaut()[0:300, 80:380]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Folders:
    # The session's shared state dir (tests/test_cli_restore.py): the embedded upscaler's IR and the face
    # detector's are converted once for every test that uses it.
    found = Folders(tmp_path_factory.mktemp("user-faces"), tmp_path_factory.getbasetemp() / "restorer-state")
    write_tiny_restoreformer(found.weights, "MyFaces.pth")
    write_random_codeformer(found.weights, "MyCodeFormer.safetensors")
    write_model(UPSCALER, found.weights)
    (found.weights / "Broken.pth").write_bytes(b"not a model")
    PILImage.fromarray(astronaut_face()).save(found.photo)
    return found


@pytest.fixture(scope="module")
def cli_report(folders: Folders) -> dict[str, object]:
    """`restorer restore --face-model MyFaces` in its own process. On torch: converting even this tiny
    RestoreFormer to OpenVINO costs 10-40 s here; the IR path is the built-in models' (face_xml is named by
    architecture and the file's sha256, whoever's file it is)."""
    out = folders.root / "out"
    command = [
        *(str(RESTORER), "restore", str(folders.photo), "-o", str(out), "--report", str(out / "report.json")),
        *("--face-model", "MyFaces", "--model", "realesr-animevideov3", "--scale", "2"),
        *("--backend", "torch", "--precision", "fp32"),
        *("--weights-dir", str(folders.weights), "--state-dir", str(folders.state)),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RESTORER_THREADS": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    with PILImage.open(out / "astronaut.png") as restored:
        assert restored.size == (384, 384)
    [entry] = json.loads((out / "report.json").read_text())
    return dict(entry)


def test_a_user_face_file_named_as_face_model_restores_the_face_through_the_cli(
    folders: Folders, cli_report: dict[str, object]
) -> None:
    faces = cli_report["faces"]
    assert isinstance(faces, list) and [face["restored"] for face in faces] == [True], faces
    steps = cli_report["steps"]
    assert isinstance(steps, list)
    assert [(step["model"], step["kind"]) for step in steps] == [
        ("realesr-animevideov3", "upscale"),
        ("MyFaces", "face"),
    ]
    assert (cli_report["backend"], cli_report["precision"]) == ("torch", "fp32")


def test_auto_never_picks_a_user_file_but_the_stage_lists_them(folders: Folders) -> None:
    spec, reason = choose_face_model("auto", folders.weights, folders.cache)
    assert spec is None and reason is not None and "add GFPGANv1.4.pth" in reason
    status = FaceStage(folders.engine()).status()
    assert status["face_models_available"] == ["MyCodeFormer", "MyFaces"]
    assert status["auto_face_model"] is None and status["restoration_available"] is False


def test_an_upscaler_or_a_refused_file_as_face_model_says_why_and_the_photo_still_comes_out(
    folders: Folders,
) -> None:
    restorer = Restorer(folders.engine(), upscaler_loader=lambda *_: ConvStackUpscaler(scale=2, layers=1))
    image = Image(astronaut_face())
    output, report = restorer.restore(image, RestoreOptions(scale=2, face_model=UPSCALER.id))
    assert output.pixels.shape == (384, 384, 3)
    [face] = report.faces
    assert face.restored is False
    expected = f"face restoration unavailable: {UPSCALER.id} is not a face model (ESRGAN x1, restore)"
    assert face.reason == expected
    # A refused file, a name no file has: the same kind of reason, with the cause.
    _, broken = choose_face_model("Broken", folders.weights, folders.cache)
    assert broken is not None
    assert broken.startswith("face restoration unavailable: model Broken: Broken.pth was refused: ")
    _, unknown = choose_face_model("NoSuchFile", folders.weights, folders.cache)
    assert unknown is not None and "unknown model 'NoSuchFile'" in unknown and "MyFaces" in unknown
    # And the other way round: a face network is no upscaler.
    with pytest.raises(UnknownModelError, match=r"MyFaces is a face model .*choose it as face_model"):
        Restorer(folders.engine()).restore(image, RestoreOptions(model="MyFaces", faces=False))


def test_a_user_codeformer_file_is_a_face_model_that_takes_the_fidelity_weight(folders: Folders) -> None:
    """The fidelity follows the architecture, not the id (tests/test_chains.py proves w reaches the
    network and its IR; a CodeFormer forward costs ~13 s a face here, so this one is not run)."""
    codeformer, reason = choose_face_model("MyCodeFormer", folders.weights, folders.cache)
    faces, _ = choose_face_model("MyFaces", folders.weights, folders.cache)
    assert reason is None and codeformer is not None and faces is not None
    assert (codeformer.arch, codeformer.purpose, codeformer.user) == ("CodeFormer", "face", True)
    assert face_fidelity(codeformer, 0.9) == 0.9 and face_fidelity(faces, 0.9) == 0.0
    # Its IR carries w (baked into the converted graph), as the built-in CodeFormer's does.
    assert face_xml(codeformer.arch, folders.cache, "0" * 64, 0.9).name.endswith("-w0.900-1x3x512x512.xml")


def test_without_the_opt_in_package_a_codeformer_file_says_which_package_it_needs(
    folders: Folders, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(user_models, "codeformer_support", lambda: None)
    found = user_models.detect(folders.weights / "MyCodeFormer.safetensors")
    assert found.refused == user_models.NEEDS_CODEFORMER and "spandrel_extra_arches" in found.refused
    monkeypatch.undo()
    assert user_models._stale(found)  # remembered so, it is looked at again now that the package is here


def test_a_face_conversion_that_computes_something_else_is_caught() -> None:
    """The check _convert_face applies before keeping a face network's IR: the same network converted
    agrees with torch; a network converted from other weights (what a mishandled variant amounts to) does
    not, so it is never saved."""
    import torch

    from pipeline.backends.ir import agreement_with_torch, torch_to_ov
    from pipeline.faces.restore import FACE_CHECK_DB

    torch.manual_seed(0)
    shape = [1, 3, 32, 32]
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid()).eval()
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Sigmoid()).eval()
    converted = torch_to_ov(network, shape, shape, trace=False)
    assert agreement_with_torch(network, converted, shape) > 80
    assert agreement_with_torch(other, converted, shape) < FACE_CHECK_DB
