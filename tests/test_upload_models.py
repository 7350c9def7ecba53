"""An upload may choose its model (issue 22): `model` form fields, in order a chain, each an id the
composition lists as selectable, override the preset's model for those files only; anything else is
refused before a byte lands in the inbox. The race with the watcher, and a daemon worker restoring an
uploaded photo with the chosen model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from daemon.intake import enqueue_file, read_entry
from daemon.job_loop import PipelineProcessor, Worker
from daemon.store import JobStore
from pipeline.models import get_spec
from pipeline.weights import ModelStatus
from tests.support.site import InProcessSite, png_bytes, running_site

PROBLEM = "application/problem+json"
EMBEDDED = ["RealESRGAN_x4plus", "RealESRGAN_x4plus_anime_6B", "realesr-animevideov3"]  # no weights/ needed
CHEAPEST = "realesr-animevideov3"  # embedded, SRVGGNetCompact: the fastest built-in


@pytest.fixture
def site(tmp_path: Path) -> Iterator[InProcessSite]:
    """The site with the composition's model listing over an empty weights folder: the embedded models
    are the selectable ones. Its default model has no weights here (only a chosen model can run)."""
    (tmp_path / "weights").mkdir()
    with running_site(
        tmp_path,
        list_models=True,
        weights_dir=tmp_path / "weights",
        model="RealESRGAN_x2plus",
        faces=False,
        backend="torch",
        precision="fp32",
        threads=1,
    ) as running:
        yield running


def upload(site: InProcessSite, models: list[str], name: str = "photo.png", seed: int = 1, **data: str):  # type: ignore[no-untyped-def]
    fields = [("model", model) for model in models] + list(data.items())
    return site.post("/api/v1/jobs", files=[("file", (name, png_bytes(seed=seed), "image/png"))], data=fields)


def test_a_model_that_is_not_selectable_is_refused_and_nothing_is_saved(site: InProcessSite) -> None:
    refused = {
        "../../etc/passwd": "is not a model here",
        "": "the 'model' field is empty",
        "x" * 5000: "longer than 255 bytes",
        "GFPGANv1.4": "no weights here",  # a face model (and absent): never the `model` option
        "realesr-general-wdn-x4v3": "no weights here",  # a denoise companion
        "no-such-model": "is not a model here",
    }
    for model, words in refused.items():
        response = upload(site, [CHEAPEST, model])  # one bad step refuses the whole chain
        assert response.status_code == 400, (model[:40], response.text)
        assert response.headers["Content-Type"].startswith(PROBLEM)
        detail = response.json()["detail"]
        assert words in detail, detail
        if len(model) <= 255:
            assert f"usable here: {', '.join(sorted(EMBEDDED))}" in detail, detail
    too_long_chain = upload(site, [CHEAPEST] * 9)
    assert too_long_chain.status_code == 400 and "more than 8" in too_long_chain.json()["detail"]
    assert not [path for path in site.settings.inbox.rglob("*")]
    assert site.get("/api/v1/stats").json()["total"] == 0


def test_only_whole_photo_models_with_weights_are_selectable() -> None:
    """The rule the API and the page read (ModelStatus.selectable): a face model or a denoise companion is
    never a step of the `model` option, even with its weights here; a missing model is not either."""
    assert ModelStatus(get_spec(CHEAPEST), "embedded", None, "", None, "").selectable
    assert not ModelStatus(get_spec("GFPGANv1.4"), "available", Path("x"), "", None, "").selectable
    assert not ModelStatus(
        get_spec("realesr-general-wdn-x4v3"), "available", Path("x"), "", None, ""
    ).selectable
    assert not ModelStatus(get_spec("RealESRGAN_x2plus"), "missing", None, "", None, "").selectable


def test_the_chosen_models_are_the_jobs_and_another_choice_is_another_job(site: InProcessSite) -> None:
    listed = {m["id"]: m["selectable"] for m in site.get("/api/v1/capabilities").json()["models"]}
    assert sorted(i for i, ok in listed.items() if ok) == sorted(EMBEDDED)

    one = upload(site, [CHEAPEST])
    assert one.status_code == 202, one.text
    assert one.json()["jobs"][0]["options"]["model"] == CHEAPEST
    chain = upload(site, [CHEAPEST, "RealESRGAN_x4plus"], preset="anime")
    assert chain.status_code == 202, chain.text
    job = chain.json()["jobs"][0]
    assert job["input"]["path"] == "anime/photo.png" and job["preset"] == "anime"
    assert job["options"]["model"] == [CHEAPEST, "RealESRGAN_x4plus"]  # the preset's other options stay
    # The same photo again with the preset's model is not a twin of the chosen ones: a job of its own.
    plain = upload(site, [], name="again.png")
    assert plain.status_code == 202 and plain.json()["jobs"][0]["state"] == "queued"
    assert plain.json()["jobs"][0]["options"]["model"] == "RealESRGAN_x2plus"


def test_an_upload_the_watcher_recorded_first_still_gets_its_model(tmp_path: Path) -> None:
    """The watcher may see a just-published upload and record it (with the preset's model) before the
    upload's own enqueue_file: the upload's choice wins while the job is queued, and never once claimed."""
    from tests.support.settings import make_settings

    settings = make_settings(tmp_path)
    store = JobStore(settings.db_path)
    for name in ("claimed.png", "queued.png"):
        (settings.inbox / name).write_bytes(png_bytes(seed=len(name)))
    recorded = {}
    for name in ("claimed.png", "queued.png"):
        entry = read_entry(settings, settings.inbox, name)
        assert entry.version is not None and entry.admission is not None
        recorded[name] = (entry, enqueue_file(settings, store, name, entry.version, entry.admission).job)
    claimed = store.claim_next()
    assert claimed is not None and claimed.input_path == "claimed.png"
    for name, (entry, watcher_job) in recorded.items():
        upload_result = enqueue_file(settings, store, name, entry.version, entry.admission, model=(CHEAPEST,))
        assert not upload_result.created and upload_result.job.id == watcher_job.id
        expected = CHEAPEST if name == "queued.png" else "RealESRGAN_x4plus"  # claimed ran as it was
        assert upload_result.job.options["model"] == expected
    store.close()


def test_the_worker_restores_an_upload_with_the_model_it_chose(site: InProcessSite) -> None:
    """Upload -> job options -> a real worker: the default model's weights are absent, so only the chosen
    one can have made the 4x result the report names."""
    response = upload(site, [CHEAPEST], name="small.png")
    assert response.status_code == 202, response.text
    settings = site.settings
    store = JobStore(settings.db_path)
    try:
        job = Worker(settings, store, PipelineProcessor(settings), lambda message: None).run_one()
    finally:
        store.close()
    assert job is not None and job.state == "done", job and job.error
    assert job.report is not None and job.report["model"] == CHEAPEST
    assert Image.open(settings.outbox / "small.png").size == (128, 96)
