"""Chains of models per preset (several models run in order, faces last) and the face models' own knobs
(CodeFormer's fidelity weight), through the real daemon worker and the real loaders."""

from __future__ import annotations

import inspect
import io
import itertools
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from daemon.admission import Admitted
from daemon.intake import enqueue_file, read_entry
from daemon.job_loop import PipelineProcessor, Worker, restore_options_from
from daemon.settings import Preset, Settings
from daemon.store import Job, JobStore
from pipeline import stage_spans
from pipeline.backends.base import BackendInfo
from pipeline.faces import FaceStage
from pipeline.faces.restore import OpenVinoFaceRunner, face_module, face_xml
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer
from pipeline.types import EngineConfig, Image
from tests.chain_support import write_tiny_x2plus
from tests.fake_upscalers import ConvStackUpscaler
from tests.support.settings import make_settings

CHAIN = ["RealESRGAN_x2plus", "realesr-animevideov3"]  # 2 x 4


def astronaut_png(size: int) -> bytes:
    import cv2
    import skimage

    photo = cv2.resize(skimage.data.astronaut()[0:300, 80:380], (size, size), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    PILImage.fromarray(photo).save(buffer, format="PNG")
    return buffer.getvalue()


# -- options: one home, presets made from it -------------------------------------------------------------


def queue_file(settings: Settings, store: JobStore, relative: str) -> Job:
    """Intake's own path for one inbox file: admit it, hash it, record the job."""
    entry = read_entry(settings, settings.inbox, relative)
    assert isinstance(entry.admission, Admitted) and entry.version is not None, entry
    return enqueue_file(settings, store, relative, entry.version, entry.admission).job


def test_a_chain_is_one_model_option_written_as_a_list_or_text() -> None:
    assert RestoreOptions().model == ("RealESRGAN_x4plus",)
    assert RestoreOptions(model="a, b").model == RestoreOptions(model=["a", "b"]).model == ("a", "b")
    assert Preset(model=CHAIN).overrides() == {"model": tuple(CHAIN)}
    with pytest.raises(ValueError, match="at least 1 item"):
        Preset(model=[])


def test_models_is_another_name_for_the_model_key_and_the_environment_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "restorer.toml"
    config.write_text(f"models = {CHAIN!r}\n[presets.clean]\nmodels = ['1x-FBCNN', 'RealESRGAN_x4plus']\n")
    settings = Settings.load(config)
    assert settings.restore_options().model == tuple(CHAIN)
    assert settings.restore_options("clean").model == ("1x-FBCNN", "RealESRGAN_x4plus")
    assert RestoreOptions.model_validate({"models": "a,b"}).model == ("a", "b")
    monkeypatch.setenv("RESTORER_MODEL", "realesr-animevideov3")
    assert Settings.load(config).model == ("realesr-animevideov3",)
    config.write_text("model = 'a'\nmodels = ['b']\n")
    with pytest.raises(ValueError, match="both `model` and `models`"):
        Settings.load(config)
    with pytest.raises(ValueError, match="not both"):
        Preset.model_validate({"model": "a", "models": ["b"]})


def test_presets_and_settings_take_every_option_with_the_same_bounds(monkeypatch) -> None:
    monkeypatch.setenv("RESTORER_MODEL", ",".join(CHAIN))
    monkeypatch.setenv("RESTORER_CODEFORMER_FIDELITY", "0.25")
    settings = Settings()
    assert settings.restore_options().model == tuple(CHAIN)
    assert settings.restore_options().codeformer_fidelity == 0.25
    assert set(Preset.model_fields) == set(RestoreOptions.model_fields)
    for bad in ({"scale": 0.5}, {"codeformer_fidelity": 1.5}, {"quality": 0}, {"face_strength": -1}):
        with pytest.raises(ValueError):
            Preset(**bad)
        with pytest.raises(ValueError):
            RestoreOptions(**bad)


# -- a chain through the daemon ------------------------------------------------------------------------


def test_a_preset_folder_runs_its_chain_and_reports_every_step(tmp_path: Path) -> None:
    """inbox/chain/ runs x2plus then animevideov3 (torch: the code path CUDA takes too) and reports every
    step; progress only grows across both steps."""
    write_tiny_x2plus(tmp_path / "weights")
    chain = {"model": CHAIN, "scale": 8, "faces": False}
    engine = {"backend": "torch", "precision": "fp32", "threads": 2}
    settings = make_settings(tmp_path, **engine, weights_dir=tmp_path / "weights", presets={"chain": chain})
    store = JobStore(settings.db_path)
    worker = Worker(settings, store, PipelineProcessor(settings), lambda message: None)
    relative = "chain/astronaut.png"
    (settings.inbox / "chain").mkdir()
    (settings.inbox / relative).write_bytes(astronaut_png(24))
    queued = queue_file(settings, store, relative)
    assert queued.preset == "chain"
    writes: list[tuple[float, float, str | None]] = []
    record_progress = store.update_progress

    def recording(job_id: int, progress: float, stage: str | None):  # type: ignore[no-untyped-def]
        writes.append((time.monotonic() - claimed, progress, stage))
        return record_progress(job_id, progress, stage)

    store.update_progress = recording  # type: ignore[method-assign]
    claimed = time.monotonic()
    job = worker.run_one()
    store.close()

    assert job is not None and job.state == "done", job and job.error
    assert PILImage.open(settings.outbox / relative).size == (192, 192)
    report = job.report
    assert report["output_size"] == [192, 192] and report["model"] == " + ".join(CHAIN)
    assert [(s["model"], s["scale"], s["kind"]) for s in report["steps"]] == [
        ("RealESRGAN_x2plus", 2, "upscale"),
        ("realesr-animevideov3", 4, "upscale"),
    ]
    assert all(s["tiles"] >= 1 and s["seconds"] > 0 for s in report["steps"])
    progress = [value for _, value, _ in writes]
    assert progress == sorted(progress), writes  # never backwards, across both steps
    upscale_start, upscale_end = stage_spans()["upscale"]
    inside = [value for _, value, stage in writes if stage == "upscale"]
    assert inside and min(inside) < (upscale_start + upscale_end) / 2 < max(inside)  # both steps counted
    # The API's ETA for a running job (elapsed * (1 - p) / p) never jumps up by more than time passing at
    # the measured pace and the share of the stage just entered (as for one model: test_worker).
    spans = stage_spans()
    paced = [(at, value, stage) for at, value, stage in writes if value >= 0.05]
    for (before_at, before, _), (at, now, stage) in itertools.pairwise(paced):
        start, end = spans[stage or "decode"]
        allowed = (at - before_at) * (1 - before) / before + (end - start) * before_at / before
        assert at * (1 - now) / now <= before_at * (1 - before) / before + allowed + 1e-6


def test_each_preset_folder_gets_its_own_face_model(tmp_path: Path) -> None:
    """inbox/<preset>/ -> the job's stored options -> the worker's options -> the face stage's choice: the
    face model (and CodeFormer's w) a preset names is the one the stage loads. Their weights are absent
    here, so the stage says which file it wanted (a real face network per preset is test_faces_stage's)."""
    presets = {
        "natural": {"face_model": "GFPGANv1.3"},
        "former": {"face_model": "RestoreFormer"},
        "codeformer": {"face_model": "CodeFormer", "codeformer_fidelity": 0.9},
    }
    settings = make_settings(tmp_path, presets=presets)
    store = JobStore(settings.db_path)
    stage = FaceStage(settings.engine_config())
    wanted = {}
    for preset in [*presets, None]:
        relative = f"{preset}/a.png" if preset else "a.png"
        (settings.inbox / relative).parent.mkdir(parents=True, exist_ok=True)
        (settings.inbox / relative).write_bytes(astronaut_png(16 + len(wanted)))
        job = queue_file(settings, store, relative)
        options = restore_options_from(job, settings)
        _, reason = stage.restorer(options)
        wanted[preset] = (options.face_model, options.codeformer_fidelity, reason)
    store.close()
    assert wanted["codeformer"][:2] == ("CodeFormer", 0.9) and wanted[None][:2] == ("auto", 0.5)
    for preset, file in [
        ("natural", "GFPGANv1.3.pth"),
        ("former", "RestoreFormer.pth"),
        (None, "GFPGANv1.4"),
    ]:
        assert file in wanted[preset][2], wanted[preset]
    assert "codeformer.pth" in wanted["codeformer"][2]


# -- CodeFormer's fidelity weight w ----------------------------------------------------------------------


def test_codeformer_forward_takes_the_keyword_our_wrapper_passes() -> None:
    """spandrel_extra_arches' CodeFormer.forward(x, weight=0.5, **kwargs) swallows any other keyword (the
    reference's `w`) silently: the wrapper must pass `weight`, a named parameter of the installed class."""
    codeformer = pytest.importorskip("spandrel_extra_arches.architectures.CodeFormer")
    parameters = inspect.signature(codeformer.CodeFormer.forward).parameters
    assert "weight" in parameters and parameters["weight"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD


class FidelityNet(torch.nn.Module):
    """CodeFormer's call shape (forward(x, weight) -> (image, logits)) with its fidelity fusion: the decoder
    output plus w x a feature of the input (Fuse_sft_block), small enough to convert in a second."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.decode = torch.nn.Conv2d(3, 3, 3, padding=1)
        self.fuse = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor, weight: float = 0.5, **kwargs: object) -> tuple[torch.Tensor, None]:
        decoded = torch.tanh(self.decode(x))
        return decoded + weight * torch.tanh(self.fuse(x)), None


def test_fidelity_reaches_the_network_and_its_converted_ir(tmp_path: Path) -> None:
    """Each w gets its own IR (the converter bakes w into the graph; the file name carries it) and the
    outputs differ for w = 0 and w = 1, in torch and in OpenVINO alike."""
    from pipeline.backends.ir import save_ir, torch_to_ov

    net = FidelityNet()
    crop = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)  # the stage's are 512: same path
    engine = EngineConfig(cache_dir=str(tmp_path), threads=1)
    info = BackendInfo("openvino", "cpu", "fp32", "test")
    outputs = {}
    for fidelity in (0.0, 1.0):
        module = face_module(types.SimpleNamespace(model=net), "CodeFormer", fidelity)
        xml = face_xml("CodeFormer", tmp_path, "0" * 64, fidelity)
        shape = [1, 3, 64, 64]
        save_ir(torch_to_ov(module, shape, shape, trace=False), xml)
        ir = OpenVinoFaceRunner(xml, info, engine)(crop)
        with torch.inference_mode():
            eager = module(torch.from_numpy(crop.transpose(2, 0, 1))[None])[0].numpy().transpose(1, 2, 0)
        assert np.abs(ir - eager).max() < 1e-4
        outputs[fidelity] = ir
    assert face_xml("CodeFormer", tmp_path, "0" * 64, 0.0) != face_xml("CodeFormer", tmp_path, "0" * 64, 1.0)
    assert np.abs(outputs[0.0] - outputs[1.0]).mean() > 0.01


# -- the chain inside the Restorer (numpy networks: no engine) ----------------------------------------------


def scaled_loader(model_id: str, engine: EngineConfig, denoise: float | None) -> ConvStackUpscaler:
    return ConvStackUpscaler(scale=int(model_id.removeprefix("x")), layers=2, tile=32)


@pytest.mark.parametrize(
    ("shape", "mode"), [((20, 24, 4), "RGBA"), ((20, 24), "L"), ((20, 24, 3), "RGB")], ids=str
)
def test_every_plane_goes_through_every_step_and_progress_only_grows(
    shape: tuple[int, ...], mode: str
) -> None:
    """16-bit RGBA (alpha through the network too), gray and colour through x2 then x4: the planes keep
    their layout, the scales multiply, each step's tiles are counted once in one growing progress."""
    pixels = np.random.default_rng(1).integers(0, 65536, shape, dtype=np.uint16)
    seen: list[tuple[str, int, int]] = []
    options = RestoreOptions(model=["x2", "x4"], scale=8, faces=False)
    output, report = Restorer(EngineConfig(), upscaler_loader=scaled_loader).restore(
        Image(pixels, original_mode=mode), options, lambda *call: seen.append(call)
    )
    assert output.pixels.shape == (160, 192, *shape[2:]) and output.pixels.dtype == np.uint16
    assert [(s.model, s.scale) for s in report.steps] == [("x2", 2), ("x4", 4)]
    assert report.tiles == sum(s.tiles for s in report.steps) and "resize" not in report.stage_seconds
    upscale = [(done, total) for stage, done, total in seen if stage == "upscale"]
    assert [done for done, _ in upscale] == sorted(done for done, _ in upscale)
    assert {total for _, total in upscale} == {upscale[-1][1]} and upscale[-1][0] == upscale[-1][1]
    assert upscale[-1][1] == report.tiles  # the whole image's tiles, every step (and alpha) included


def test_the_face_model_is_the_last_step_of_the_report() -> None:
    from tests.test_restorer import RecordingFaceStage

    class NamedFaceStage(RecordingFaceStage):
        def prepare(self, rgb, options, on_progress=None):  # type: ignore[no-untyped-def]
            prepared = super().prepare(rgb, options, on_progress)
            prepared.model, prepared.seconds["faces-restore"] = "GFPGANv1.3", 0.25
            return prepared

    restorer = Restorer(EngineConfig(), upscaler_loader=scaled_loader)
    restorer._face_stage = NamedFaceStage()
    pixels = np.random.default_rng(2).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    _, report = restorer.restore(Image(pixels), RestoreOptions(model=["x2", "x4"], scale=8))
    steps = [(s.model, s.scale, s.kind) for s in report.steps]
    assert steps == [("x2", 2, "upscale"), ("x4", 4, "upscale"), ("GFPGANv1.3", 1, "face")]
    assert report.steps[-1].seconds >= 0.25 and report.steps[-1].tiles == 0
