"""Issue 11: once the networks are converted and cached, the daemon's worker restores photos (super-
resolution, face detection and face restoration, all on OpenVINO) without torch in its memory. Torch is
only imported by the short-lived converter process (pipeline/backends/ir.py).

Checked from outside on a real `restorer serve`: the worker process's memory map has OpenVINO's libraries
(it ran the networks) and no libtorch. Real embedded weights; the face network is a randomly initialised
GFPGAN of the official shape (no registry ships face weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.faces_support import write_random_gfpgan
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for
from tests.test_service import job_states, jobs


def worker_pids(parent: int) -> list[int]:
    """The service's worker: a spawned child python process (multiprocessing's spawn_main)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return found


def mapped_libraries(pid: int) -> set[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]).name for line in lines if len(line.split()) >= 6 and ".so" in line}


def astronaut_photo(path: Path, shift: int) -> None:
    """One ~90 px face; a different shift makes different bytes (the daemon skips repeated content)."""
    from skimage import data

    Image.fromarray(data.astronaut()[0:200, 120 + shift : 320 + shift]).save(path, quality=95)


def serve_and_restore(
    serves: list[ServeProcess], root: Path, env: dict[str, str], name: str, shift: int
) -> set[str]:
    """Start the service, restore one photo, return the libraries its worker has mapped."""
    serve = ServeProcess(root, env, processor=None)  # the installed `restorer`, the real pipeline
    serves.append(serve)
    serve.wait_ready(timeout=900)  # the cold start converts every network (separate processes)
    count = len(jobs(root))
    astronaut_photo(root / "inbox" / name, shift)
    wait_for(lambda: len(job_states(root)) == count + 1 and job_states(root)[-1] in ("done", "failed"), 300)
    job = jobs(root)[-1]
    assert job.state == "done", job.error
    assert job.report["backend"] == "openvino"
    assert [face["restored"] for face in job.report["faces"]] == [True], job.report["faces"]
    (worker,) = worker_pids(serve.proc.pid)
    libraries = mapped_libraries(worker)
    assert serve.terminate() == 0
    return libraries


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_worker_restores_faces_and_all_from_a_warm_cache_without_torch(
    tmp_path: Path, serves: list[ServeProcess]
) -> None:
    for folder in ("inbox", "outbox", "failed", "archive", "state"):
        (tmp_path / folder).mkdir()
    write_random_gfpgan(tmp_path / "weights")
    env = {
        "RESTORER_MODEL": "realesr-animevideov3",
        "RESTORER_FACES": "true",
        "RESTORER_WEIGHTS_DIR": str(tmp_path / "weights"),
    }
    cold = serve_and_restore(serves, tmp_path, env, "first.jpg", 0)
    ir = sorted((tmp_path / "state" / "cache" / "openvino" / "ir").glob("*-dynamic.xml"))
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "state" / "cache").rglob("*.xml")}
    assert ir and any(path.name.startswith("face-GFPGAN") for path in stamps)
    assert sum(path.name.startswith("mtcnn-") for path in stamps) == 3

    warm = serve_and_restore(serves, tmp_path, env, "second.jpg", 4)
    assert any(name.startswith("libopenvino") for name in warm)  # the check sees the networks' runtime
    assert not any("torch" in name for name in warm), sorted(n for n in warm if "torch" in n)
    assert not any("torch" in name for name in cold)  # converting happened in other processes
    after = {path: path.stat().st_mtime_ns for path in (tmp_path / "state" / "cache").rglob("*.xml")}
    assert {p: after[p] for p in stamps} == stamps  # warm: nothing converted again
