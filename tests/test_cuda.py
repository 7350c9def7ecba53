"""The CUDA path, on a machine with an NVIDIA GPU: the torch backend in fp16 and bf16 against fp32 on the
CPU, faces on the GPU, and one worker per GPU in a real `restorer serve`. Skipped where torch sees no GPU
(every CI machine so far); `benchmarks/gpu_check.sh` runs them first on any GPU machine."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import skimage
import torch

from pipeline.evaluation.fidelity import compare, options_for_fidelity, reference_restorer
from pipeline.options import RestoreOptions
from pipeline.restorer import Restorer
from pipeline.types import Device, EngineConfig, Image, RestoreReport
from pipeline.weights import embedded_models_dir
from tests.faces_support import write_random_gfpgan
from tests.support.serve import ServeProcess
from tests.support.site import png_bytes
from tests.support.waiting import wait_for
from tests.support.workspace import files_under

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA GPU"),
    pytest.mark.skipif(embedded_models_dir() is None, reason="embedded Real-ESRGAN weights not installed"),
]

# PSNR of the GPU output against torch fp32 on the CPU, whole planes. fp16 keeps 10 mantissa bits; bf16
# keeps 7 (OpenVINO bf16 on the CPU gives 43.9-52.4 dB on Real-ESRGAN's demo inputs, docs/performance.md).
BARS_DB = {"fp16": 45.0, "bf16": 40.0}


def _precisions() -> list[str]:
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return ["fp16", "bf16"] if supported else ["fp16"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.getbasetemp() / "restorer-state" / "cache")  # shared with other tests


@pytest.mark.parametrize("precision", _precisions())
def test_x4plus_on_the_gpu_matches_fp32_on_the_cpu(precision: str, cache: str, record_property) -> None:
    photo = Image(skimage.data.chelsea()[60:180, 100:260])
    options = options_for_fidelity(RestoreOptions())
    gpu = Restorer(EngineConfig(cache_dir=cache, backend="torch", device="cuda", precision=precision))
    output, report = gpu.restore(photo, options)
    reference, _ = reference_restorer(EngineConfig(cache_dir=cache)).restore(photo, options)
    fidelity = compare(output.pixels, reference.pixels)
    record_property("psnr_db", fidelity.psnr_db)
    assert (report.backend, report.device, report.precision) == ("torch", "cuda", precision)
    assert output.pixels.shape == (480, 640, 3)
    assert fidelity.psnr_db >= BARS_DB[precision], fidelity


def test_faces_are_restored_on_the_gpu_like_on_the_cpu(tmp_path: Path, cache: str) -> None:
    write_random_gfpgan(tmp_path / "weights")
    photo = Image(skimage.data.astronaut()[0:300, 80:380])
    weights = str(tmp_path / "weights")

    def restore_on(device: Device) -> tuple[Image, RestoreReport]:
        engine = EngineConfig(weights_dir=weights, cache_dir=cache, backend="torch", device=device)
        return Restorer(replace(engine, precision="fp32")).restore(photo, RestoreOptions())

    outputs = {device: restore_on(device) for device in ("cuda", "cpu")}
    gpu_output, gpu_report = outputs["cuda"]
    assert gpu_report.device == "cuda"
    assert [face.restored for face in gpu_report.faces] == [True], gpu_report.faces
    # fp32 on both sides: only the order of summation differs (cuDNN vs oneDNN kernels).
    assert compare(gpu_output.pixels, outputs["cpu"][0].pixels).psnr_db >= 40.0


def test_each_gpu_gets_a_worker_of_its_own_and_both_restore(tmp_path: Path) -> None:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        pytest.skip(f"{gpus} GPU here: needs two")
    for folder in ("inbox", "outbox", "failed", "archive", "state"):
        (tmp_path / folder).mkdir()
    serve = ServeProcess(tmp_path, {"RESTORER_WORKERS": "auto"}, processor=None)
    try:
        serve.wait_ready(timeout=300)
        devices = sorted(slot["device"] for slot in serve.health()["workers"])
        assert devices == [f"cuda:{index}" for index in range(gpus)], serve.health()
        for index in range(2 * gpus):
            (tmp_path / "inbox" / f"photo-{index}.png").write_bytes(png_bytes(96, 64, seed=index))
        busy: set[str] = set()

        def all_done() -> bool:
            slots = serve.health()["workers"]
            busy.update(slot["device"] for slot in slots if slot.get("job_id"))
            return len(files_under(tmp_path / "outbox")) == 2 * gpus

        wait_for(all_done, timeout=300, interval=0.2)
        assert busy == set(devices), f"only {busy} took jobs"
    finally:
        serve.terminate()
        shutil.rmtree(tmp_path / "state", ignore_errors=True)
