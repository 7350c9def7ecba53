"""One job through the worker, in-process, on real folders and a real store: publishing, originals,
bad inputs, disk full, cancel, progress. The real pipeline decodes the bad inputs; a cheap copy stage
stands in for the network except in the real-restore test."""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from pydantic import ValidationError

from daemon.job_loop import PipelineProcessor, Processed, Worker
from daemon.messages import DiskFull, EngineAccount, Finished, WorkerMessage
from daemon.settings import Settings
from daemon.store import Job, JobStore
from pipeline import stage_spans
from pipeline.options import RestoreOptions
from pipeline.types import ProgressCallback
from tests.daemon_processors import CopyProcessor
from tests.support.settings import make_settings
from tests.support.workspace import files_under


class DecodingCopy(CopyProcessor):
    """The real decoder (pipeline.imageio.load_image, with the configured pixel limit), no network."""

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        from pipeline.imageio import load_image

        load_image(data, max_pixels=int(self.settings.max_input_megapixels * 1_000_000))
        return super().process(data, options, on_progress)


class Rig:
    def __init__(self, root: Path, processor: Any = None, **overrides: Any) -> None:
        self.settings: Settings = make_settings(root, **overrides)
        self.inbox = Path(self.settings.inbox)
        self.store = JobStore(self.settings.db_path)
        self.messages: list[WorkerMessage] = []
        self.worker = Worker(
            self.settings, self.store, processor or DecodingCopy(self.settings), self.messages.append
        )

    def drop(self, relative: str, data: bytes, preset: str | None = None) -> Job:
        path = self.inbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        stat = path.stat()
        options = self.settings.restore_options(preset).to_dict()
        digest = hashlib.sha256(data).hexdigest()
        return self.store.add(
            relative, digest, stat.st_size, stat.st_mtime, preset=preset, options=options
        ).job

    def run(self) -> Job:
        job = self.worker.run_one()
        assert job is not None
        return job


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.store.close()


def png_bytes(size: int = 16, seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_output_published_at_mirrored_path_and_original_archived(rig: Rig) -> None:
    rig.drop("holiday/2019/a.png", png_bytes())
    job = rig.run()
    assert job.state == "done" and job.output_path == "holiday/2019/a.png" and job.attempts == 1
    assert job.original == "archived" and job.original_path == "holiday/2019/a.png"
    assert files_under(Path(rig.settings.outbox)) == ["holiday/2019/a.png"]
    assert files_under(Path(rig.settings.archive_dir)) == ["holiday/2019/a.png"]
    assert files_under(rig.inbox) == []
    # The pool hears which engine restored it (what health shows), not the whole report.
    assert Finished("w1", job.id, "done", EngineAccount(backend="copy", device="cpu")) in rig.messages


def test_the_output_is_named_with_the_extension_that_came_with_the_bytes(tmp_path: Path) -> None:
    class Tiff(CopyProcessor):
        def process(
            self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
        ) -> Processed:
            return Processed(data, "tiff", ".tif", {"backend": "copy"})

    rig = Rig(tmp_path)
    rig.worker.processor = Tiff(rig.settings)
    rig.drop("scans/a.png", png_bytes())
    job = rig.run()
    assert job.state == "done" and job.output_path == "scans/a.tif"


def test_originals_delete_and_keep(tmp_path: Path) -> None:
    deleting = Rig(tmp_path / "d", originals="delete")
    deleting.drop("a.png", png_bytes())
    assert deleting.run().original == "deleted" and files_under(deleting.inbox) == []
    keeping = Rig(tmp_path / "k", originals="keep")
    keeping.drop("a.png", png_bytes())
    job = keeping.run()
    assert job.original == "inbox" and files_under(keeping.inbox) == ["a.png"]
    # The kept original is a recorded version: seen again, it is not a new job.
    stat = (keeping.inbox / "a.png").stat()
    assert not keeping.store.add("a.png", job.content_sha256, stat.st_size, stat.st_mtime).created


def test_failed_move_of_the_original_never_causes_reprocessing(rig: Rig) -> None:
    archive = Path(rig.settings.archive_dir)
    (archive / "sub").write_bytes(b"a file where the archive folder should be")
    rig.drop("sub/a.png", png_bytes())
    job = rig.run()
    assert job.state == "done" and job.original == "inbox"
    assert "could not archive the original" in job.note
    stat = (rig.inbox / "sub" / "a.png").stat()
    again = rig.store.add("sub/a.png", job.content_sha256, stat.st_size, stat.st_mtime)
    assert not again.created and rig.worker.run_one() is None


@pytest.mark.parametrize(
    ("case", "data", "words"),
    [
        ("zero_byte_file", b"", "empty"),
        ("wrong_magic_bytes", b"this is a text file, not a picture" * 4, "not"),
        ("unsupported_type", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 4, ""),
        ("truncated_image", png_bytes(64)[:300], ""),
    ],
)
def test_bad_input_goes_to_failed_with_reason(rig: Rig, case: str, data: bytes, words: str) -> None:
    rig.drop(f"album/{case}.png", data)
    job = rig.run()
    assert job.state == "failed" and job.failure_kind == "bad-input" and job.attempts == 1
    assert job.original == "failed_dir" and job.original_path == f"album/{case}.png"
    failed = Path(rig.settings.failed_dir) / "album"
    assert sorted(p.name for p in failed.iterdir()) == [f"{case}.png", f"{case}.png.error.txt"]
    text = (failed / f"{case}.png.error.txt").read_text()
    assert "What was wrong:" in text and "What to do:" in text and words in text.lower()
    assert files_under(Path(rig.settings.outbox)) == []
    assert rig.worker.run_one() is None  # fails once, does not loop


def test_decompression_bomb_goes_to_failed_with_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path, max_input_megapixels=0.001)  # 1,000 pixels: a 64x64 image is "too big"
    rig.drop("bomb.png", png_bytes(64))
    job = rig.run()
    assert job.state == "failed" and job.failure_kind == "bad-input"
    text = (Path(rig.settings.failed_dir) / "bomb.png.error.txt").read_text()
    assert "max_input_megapixels" in text


def test_truncated_image_reruns_only_when_the_file_changes(rig: Rig) -> None:
    rig.drop("scan.png", png_bytes(64)[:300])
    assert rig.run().state == "failed"
    fixed = rig.drop("scan.png", png_bytes(64))
    assert fixed.state == "queued" and rig.run().state == "done"


def test_outbox_full_fails_cleanly_keeps_original_and_reports(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    outbox = Path(rig.settings.outbox)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(outbox)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        big = png_bytes(160)  # ~77 KB of noise: larger than the whole outbox
        rig.drop("big.png", big)
        job = rig.run()
        assert job.state == "failed" and job.failure_kind == "disk-full"
        assert "outbox is full" in job.error and "original is still in the inbox" in job.error
        assert files_under(rig.inbox) == ["big.png"] and os.listdir(outbox) == []
        assert any(isinstance(m, DiskFull) and m.needed_bytes == len(big) for m in rig.messages)
    finally:
        subprocess.run(["umount", "-l", str(outbox)])


def test_input_changed_after_queueing_is_left_to_its_new_job(rig: Rig) -> None:
    job = rig.drop("a.png", png_bytes(seed=1))
    (rig.inbox / "a.png").write_bytes(png_bytes(seed=2))
    result = rig.run()
    assert result.id == job.id and result.state == "cancelled" and "changed" in result.note


class _CancelDuringRun(CopyProcessor):
    def __init__(self, settings: Settings, store: JobStore) -> None:
        super().__init__(settings)
        self.store = store

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        assert on_progress is not None
        on_progress("upscale", 1, 4)
        self.store.cancel(1)  # someone presses Cancel on the page
        on_progress("upscale", 4, 4)
        raise AssertionError("the worker should have stopped the job")


def test_cancel_of_a_running_job_stops_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.worker.processor = _CancelDuringRun(rig.settings, rig.store)
    rig.drop("a.png", png_bytes())
    job = rig.run()
    assert job.state == "cancelled" and files_under(Path(rig.settings.outbox)) == []
    assert files_under(rig.inbox) == ["a.png"]


def test_progress_and_stage_are_written_to_the_store(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seen: list[tuple[float, str | None]] = []

    class Watching(CopyProcessor):
        def process(
            self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
        ) -> Processed:
            assert on_progress is not None
            for done in range(1, 5):
                on_progress("upscale", done, 4)
                job = rig.store.get(1)
                seen.append((job.progress, job.stage))
            return super().process(data, options, on_progress)

    rig.worker.processor = Watching(rig.settings)
    rig.drop("a.png", png_bytes())
    rig.run()
    start, end = stage_spans()["upscale"]  # the pipeline's span for the stage; the daemon only maps it
    assert seen[0][1] == "upscale" and start < seen[0][0] < end
    assert seen[-1][0] == pytest.approx(end)  # the last tile is always written, throttle or not


def test_preset_options_reach_the_processor(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    received: list[RestoreOptions] = []

    class Recording(CopyProcessor):
        def process(
            self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
        ) -> Processed:
            received.append(options)
            return super().process(data, options, on_progress)

    rig.worker.processor = Recording(rig.settings)
    rig.drop("no-faces/a.png", png_bytes(), preset="no-faces")
    rig.run()
    assert received[0].faces is False and received[0].scale == 4


def test_no_setting_or_environment_variable_chooses_the_worker_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.service import Service

    # The old test-only setting let an environment variable make the worker import any code.
    monkeypatch.setenv("RESTORER_PROCESSOR", "tests.daemon_processors:CopyProcessor")
    assert "processor" not in Settings.model_fields
    assert Service(make_settings(tmp_path)).processor_factory is PipelineProcessor
    with pytest.raises(ValidationError, match="processor"):
        Settings.load(None, processor="tests.daemon_processors:CopyProcessor")


@pytest.mark.slow
def test_real_restore_of_a_16px_image_with_realesr_animevideov3(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        model="realesr-animevideov3",
        faces=False,
        weights_dir=Path(__file__).resolve().parent.parent / "weights",
    )
    rig = Rig(tmp_path, PipelineProcessor(settings), model="realesr-animevideov3", faces=False)
    engine = rig.worker.processor.warm_up(settings.restore_options())
    assert engine.backend in ("openvino", "torch") and engine.reason
    assert engine.models and "realesr-animevideov3" in {model["id"] for model in engine.models}
    rig.drop("photos/tiny.png", png_bytes(16))
    job = rig.run()
    assert job.state == "done", job.error
    with PILImage.open(Path(rig.settings.outbox) / "photos" / "tiny.png") as out:
        assert out.size == (64, 64)
    assert job.report["model"] == "realesr-animevideov3" and job.report["backend"] == engine.backend
    assert job.report["colour"]["path"] == "colour"  # the store keeps the pipeline's whole report


@pytest.mark.slow
def test_a_job_with_faces_never_moves_backwards_and_its_eta_rises_only_by_the_stage_it_entered(
    tmp_path: Path,
) -> None:
    """Real pipeline through the worker: embedded SR weights, a randomly initialised GFPGAN of the official
    shape, a photo with a face. Faces are restored before the upscale; progress must follow that order."""
    import cv2
    import skimage

    from tests.faces_support import write_random_gfpgan

    write_random_gfpgan(tmp_path / "weights")
    engine = {"backend": "torch", "precision": "fp32", "threads": 2}  # torch fp32: no OpenVINO compile
    options = {"model": "realesr-animevideov3", "faces": True, "weights_dir": tmp_path / "weights"}
    settings = make_settings(tmp_path, **engine, **options)
    rig = Rig(tmp_path, PipelineProcessor(settings), **engine, **options)
    rig.worker.processor.warm_up(settings.restore_options())
    writes: list[tuple[float, float, str | None]] = []  # (seconds since claim, progress, stage)
    record_progress = rig.store.update_progress

    def recording(job_id: int, progress: float, stage: str | None) -> bool:
        writes.append((time.monotonic() - claimed, progress, stage))
        return record_progress(job_id, progress, stage)

    rig.store.update_progress = recording  # type: ignore[method-assign]
    photo = cv2.resize(skimage.data.astronaut()[0:300, 80:380], (160, 160), interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    PILImage.fromarray(photo).save(buffer, format="PNG")
    rig.drop("family/astronaut.png", buffer.getvalue())
    claimed = time.monotonic()
    job = rig.run()
    assert job.state == "done", job.error
    assert job.report["faces"] and job.report["faces"][0]["restored"], job.report
    stages = [stage for _, _, stage in writes]
    assert stages.index("faces-restore") < stages.index("upscale") < stages.index("encode")
    progress = [value for _, value, _ in writes]
    assert progress == sorted(progress), writes  # never backwards
    spans = stage_spans()
    # The API's ETA for a running job: its measured pace, elapsed * (1 - p) / p. It may rise only as
    # time passes without progress at that pace, plus the share of the stage just entered.
    paced = [(at, value, stage) for at, value, stage in writes if value >= 0.05]
    for (before_at, before, _), (at, now, stage) in itertools.pairwise(paced):
        eta_before = before_at * (1 - before) / before
        eta_now = at * (1 - now) / now
        start, end = spans[stage or "decode"]
        allowed = (at - before_at) * (1 - before) / before + (end - start) * before_at / before
        assert eta_now <= eta_before + allowed + 1e-6, (stage, before, now, eta_before, eta_now)


def test_retried_failed_job_runs_from_the_failed_folder_and_cleans_up(rig: Rig) -> None:
    rig.drop("sub/flaky.png", png_bytes()[:300])
    failed = rig.run()
    assert failed.state == "failed" and failed.original == "failed_dir"
    # The user replaces nothing but asks to retry (e.g. after fixing a decoder); here: fix the file.
    (Path(rig.settings.failed_dir) / "sub" / "flaky.png").write_bytes(png_bytes())
    rig.store.retry(failed.id)
    rig.store.add_note(failed.id, "retried")
    job = rig.run()
    assert job.id == failed.id and job.state == "done" and job.original == "archived"
    assert files_under(Path(rig.settings.failed_dir)) == []
    assert files_under(Path(rig.settings.archive_dir)) == ["sub/flaky.png"]
    assert files_under(Path(rig.settings.outbox)) == ["sub/flaky.png"]


def test_awkward_names_are_published_under_their_own_names(rig: Rig) -> None:
    import unicodedata

    names = [
        "with spaces .png",
        unicodedata.normalize("NFC", "café.png"),
        unicodedata.normalize("NFD", "café.png"),
        "Case.png",
        "case.png",
        "é" * 125 + "a.png",
        "a/same.png",
        "b/same.png",
    ]
    for n, name in enumerate(names):
        rig.drop(name, png_bytes(seed=n))
    while rig.worker.run_one() is not None:
        pass
    assert {j.state for j in rig.store.list(limit=20).jobs} == {"done"}
    assert files_under(Path(rig.settings.outbox)) == sorted(names)
    assert files_under(Path(rig.settings.archive_dir)) == sorted(names)


def test_input_gone_during_a_share_outage_is_processed_when_it_returns(rig: Rig, tmp_path: Path) -> None:
    job = rig.drop("a.png", png_bytes())
    os.rename(rig.inbox / "a.png", tmp_path / "away.png")  # the share drops before the job runs
    gone = rig.run()
    assert gone.state == "cancelled" and gone.original == "deleted" and "disappeared" in gone.note
    os.rename(tmp_path / "away.png", rig.inbox / "a.png")  # ... and comes back with the same file
    stat = (rig.inbox / "a.png").stat()
    again = rig.store.add("a.png", job.content_sha256, stat.st_size, stat.st_mtime)
    assert again.created and again.job.state == "queued"
    assert rig.run().state == "done"
