"""The worker pool: N supervised worker processes, each running one job at a time.

A slot is one place a job can run. With executor = "local" each slot is its own worker process
(daemon/worker.py's worker_main) with its own pipe, heartbeat, current job, and restart backoff; on a
machine with several GPUs each process sees exactly one (CUDA_VISIBLE_DEVICES is set in the process
before anything is imported) and loads its models once. With executor = "ray" one supervised process,
the Ray client (daemon/ray_executor.py), runs one slot per Ray actor and reports per slot.

Every slot claims from the same SQLite queue (claim_next is one atomic UPDATE), so jobs are still
claimed in arrival order and a slot holds at most one job. Supervision is per process, exactly as with
one worker: a process that dies, or stays silent for hang_seconds while it holds a job, is killed and
restarted, and only ITS jobs go back to the queue (attempt counted; failed at max_attempts). A process
that dies without a job is restarted with exponential backoff (a broken driver must not spin).

Messages from a process are daemon.messages dataclasses; each slot message names its slot, so the Ray
client's one process speaks for several slots. The Ray client also announces its slots
(SlotsAnnounced) and reports its cluster (ClusterState) for health.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.health import HealthState
from daemon.messages import (
    Beat,
    Busy,
    ClusterState,
    DiskFull,
    Fatal,
    Finished,
    Placed,
    Ready,
    SlotMessage,
    SlotsAnnounced,
    Waiting,
    WorkerMessage,
)
from daemon.originals import CRASH_ADVICE, move_to_failed
from daemon.settings import Settings
from daemon.store import JobStore
from daemon.worker import PipelineProcessor, ProcessorFactory, spawn_context, worker_main

log = logging.getLogger(__name__)

MAX_RESTART_DELAY = 30.0
# Reconnecting to a lost Ray head is a TCP probe: cheap, so try more often than a crashing local worker.
MAX_RECONNECT_DELAY = 10.0
NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")  # one entry per GPU the driver sees

WorkerTarget = Callable[..., None]


class PoolStartError(Exception):
    """No worker could start; str(e) says why in one line."""


# -- how many workers, on which devices ----------------------------------------------------------------


def visible_cuda_devices(environ: Mapping[str, str], gpus_dir: Path = NVIDIA_GPUS_DIR) -> list[str]:
    """The CUDA device ids this process may use, without importing torch (the daemon never does):
    CUDA_VISIBLE_DEVICES when set (comma list; "" or "-1" hides every device), else the GPUs the NVIDIA
    driver lists."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        ids = [part.strip() for part in environ["CUDA_VISIBLE_DEVICES"].split(",")]
        visible = []
        for device in ids:
            if not device or device == "-1":
                break  # CUDA stops at the first invalid entry
            visible.append(device)
        return visible
    try:
        count = sum(1 for _ in gpus_dir.iterdir())
    except OSError:
        return []
    return [str(index) for index in range(count)]


def worker_devices(settings: Settings, environ: Mapping[str, str]) -> list[str | None]:
    """One entry per local worker: the CUDA device it gets, or None (CPU, environment unchanged).

    workers = "auto": one per visible CUDA device (unless device = "cpu"), else one. A number N on a
    GPU machine deals the visible devices round-robin; on a CPU machine every worker runs on the CPU."""
    devices = [] if settings.device == "cpu" else visible_cuda_devices(environ)
    count = settings.workers if isinstance(settings.workers, int) else max(1, len(devices))
    if not devices:
        return [None] * count
    return [devices[index % len(devices)] for index in range(count)]


# -- one supervised process ------------------------------------------------------------------------------


def _set_parent_death_signal() -> None:
    # If the service is killed with -9, the kernel kills its workers too, so no orphan keeps writing
    # while a new service starts.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def process_entry(target: WorkerTarget, env: dict[str, str], *args: Any) -> None:
    """First code in a worker process: die with the service, then set the environment (e.g.
    CUDA_VISIBLE_DEVICES) before the target imports anything that reads it (torch, CUDA, Ray)."""
    _set_parent_death_signal()
    os.environ.update(env)
    target(*args)


@dataclass
class Slot:
    """One place a job runs: what health and the page show per worker."""

    id: str
    device: str  # "cpu", "cuda:0", or for Ray the actor's node
    state: str = "starting"  # starting | loading models | idle | busy | restarting | stopped | waiting
    job_id: int | None = None
    pid: int | None = None  # the worker process; for Ray the actor's process on the host in `device`
    beat: float | None = None  # time.monotonic() of its last sign of life

    def to_dict(self, now: float) -> dict[str, Any]:
        age = None if self.beat is None else round(now - self.beat, 3)
        return {
            "id": self.id,
            "device": self.device,
            "state": self.state,
            "job_id": self.job_id,
            "pid": self.pid,
            "heartbeat_age_s": age,
        }


@dataclass
class WorkerProcess:
    """One supervised child process speaking for one slot (local) or several (the Ray client)."""

    name: str
    target: WorkerTarget
    env: dict[str, str]
    slots: dict[str, Slot]
    process: Any = None
    conn: Any = None
    ready: bool = False
    beat: float = 0.0
    restarts: int = 0
    error: str | None = None
    crashes_without_job: int = 0
    restart_at: float | None = None
    engine: dict[str, Any] = field(default_factory=dict)
    # A local worker is ready once its models are loaded. The Ray client is ready as soon as it runs:
    # the service must start (and keep its queue) while the cluster is away; its slots report later.
    waits_for_ready: bool = True

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def jobs(self) -> list[int]:
        return [slot.job_id for slot in self.slots.values() if slot.job_id is not None]

    def busy(self) -> bool:
        return bool(self.jobs())


# -- the pool ------------------------------------------------------------------------------------------


class WorkerPool:
    """Starts, supervises and stops the worker processes; keeps health's worker fields current.

    Runs on the service's event loop (pipes are read with add_reader). `on_disk_full(needed, message)` is
    called when a worker could not publish for lack of space; `on_engine(info)` with each engine account.
    """

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        health: HealthState,
        on_disk_full: Callable[[int, str], None],
        environ: Mapping[str, str] | None = None,
        processor_factory: ProcessorFactory = PipelineProcessor,
    ) -> None:
        """processor_factory: the per-job stage every worker process (or Ray actor) runs; only tests pass
        another (it is handed to the child by reference, so it must be a module-level name)."""
        self.settings = settings
        self.processor_factory = processor_factory
        self.store = store
        self.health = health
        self.on_disk_full = on_disk_full
        self._ctx = spawn_context()
        self._stop = self._ctx.Event()
        self._wake = self._ctx.Event()
        self._paused = self._ctx.Event()
        self._processes = self._plan(environ if environ is not None else os.environ)
        self._started: asyncio.Future[dict[str, Any]] | None = None
        self.cluster: dict[str, Any] | None = None  # the Ray client's account of its cluster

    def _plan(self, environ: Mapping[str, str]) -> list[WorkerProcess]:
        if self.settings.executor == "ray":
            from daemon.ray_executor import ray_client_main

            # The Ray client announces its slots (one per actor) once it knows the cluster.
            engine = {
                "backend": "ray",
                "device": "cluster",
                "reason": f"Ray actors at {self.settings.ray_address}",
            }
            return [
                WorkerProcess("ray-client", ray_client_main, {}, {}, engine=engine, waits_for_ready=False)
            ]
        processes = []
        for index, device in enumerate(worker_devices(self.settings, environ), start=1):
            name = f"w{index}"
            env = {} if device is None else {"CUDA_VISIBLE_DEVICES": device}
            label = "cpu" if device is None else f"cuda:{device}"
            processes.append(WorkerProcess(name, worker_main, env, {name: Slot(name, label)}))
        return processes

    # -- start and messages ----------------------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Start every process; return the first engine account once all have loaded their models."""
        loop = asyncio.get_running_loop()
        self._started = loop.create_future()
        for worker in self._processes:
            self._spawn(worker)
        return await self._started

    def _spawn(self, worker: WorkerProcess) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=process_entry,
            name=f"restorer-{worker.name}",
            args=(
                worker.target,
                worker.env,
                self.settings.to_child_json(),
                self.processor_factory,
                child,
                self._stop,
                self._wake,
                self._paused,
                logging.getLogger().getEffectiveLevel(),
                worker.name,
            ),
            daemon=True,
        )
        process.start()
        child.close()
        worker.process, worker.conn, worker.ready = process, parent, not worker.waits_for_ready
        worker.beat = time.monotonic()
        worker.error = None
        for slot in worker.slots.values():
            slot.state, slot.job_id, slot.pid, slot.beat = "loading models", None, process.pid, worker.beat
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_readable, worker)
        log.info("worker %s started (pid %d)", worker.name, process.pid)
        self._maybe_started()
        self._publish()

    def _on_readable(self, worker: WorkerProcess) -> None:
        conn = worker.conn
        try:
            while conn is not None and conn.poll():
                self._on_message(worker, conn.recv())
        except (EOFError, OSError):
            self._detach(worker)
        self._publish()

    def _detach(self, worker: WorkerProcess) -> None:
        if worker.conn is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(worker.conn.fileno())
            with contextlib.suppress(Exception):
                worker.conn.close()
            worker.conn = None

    def _on_message(self, worker: WorkerProcess, message: WorkerMessage) -> None:
        now = time.monotonic()
        worker.beat = now
        self.health.worker_beat()
        match message:
            case SlotsAnnounced(slots=announced):  # known slots are kept
                slots = {}
                for slot_id, device in announced:
                    slot = worker.slots.get(slot_id) or Slot(slot_id, device, state="loading models")
                    slot.pid, slot.beat = worker.process.pid, now
                    slots[slot_id] = slot
                worker.slots = slots
            case ClusterState(state=state, details=details):
                self._on_cluster(worker, state, details)
            case _:
                self._on_slot_message(worker, message, now)

    def _on_cluster(self, worker: WorkerProcess, state: str, details: dict[str, Any]) -> None:
        was = self.cluster.get("state") if self.cluster else None
        if state == "connecting" and was == "unreachable":
            return  # still unreachable until it actually connects: no flicker to "ok" on each retry
        if state == "connected":
            worker.crashes_without_job = 0
            if was != "connected":
                log.info(
                    "Ray cluster at %s connected (%s node(s))", details.get("address"), details.get("nodes")
                )
        elif state == "unreachable" and was != "unreachable":
            log.error("Ray cluster unreachable: %s", details.get("error"))
        self.cluster = {"state": state, **details}

    def _on_slot_message(self, worker: WorkerProcess, message: SlotMessage, now: float) -> None:
        slot = worker.slots.get(message.slot)
        if slot is not None:
            slot.beat = now
        match message:
            case Ready(engine=engine):
                worker.ready, worker.crashes_without_job, worker.engine = True, 0, dict(engine)
                for each in worker.slots.values():
                    each.state = "idle"
                self._maybe_started()
            case Fatal(message=why):
                log.error("worker %s could not start: %s", worker.name, why)
                worker.error = why
                self._fail_start(f"the worker could not load the pipeline: {why}")
            case Busy(job_id=job_id) if slot is not None:
                slot.state, slot.job_id = "busy", job_id
            case Finished(report=report) if slot is not None:
                slot.state, slot.job_id = "idle", None
                if report and report.get("backend"):
                    self.health.set_engine({**report, "reason": report.get("backend_reason")})
            case Waiting() if slot is not None:  # a Ray slot without a live actor
                slot.state, slot.job_id = "waiting", None
            case Placed(device=device, details=details) if slot is not None:  # its actor loaded its models
                slot.state, slot.device = "idle", device
                slot.pid = details.get("pid")  # the actor's process, on the host named in device
            case DiskFull(needed_bytes=needed, message=why):
                self.on_disk_full(needed, why)
            case Beat():
                pass

    def _maybe_started(self) -> None:
        if self._started is None or self._started.done():
            return
        if all(worker.ready for worker in self._processes):
            self._started.set_result(self._processes[0].engine)

    def _fail_start(self, why: str) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_exception(PoolStartError(why))

    # -- supervision -----------------------------------------------------------------------------------

    async def supervise(self) -> None:
        """Called a few times a second: restart what died or hung, when its backoff has passed."""
        now = time.monotonic()
        for worker in self._processes:
            if worker.process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.restart_at = None
                    self._spawn(worker)
                continue
            if not worker.process.is_alive():
                why = f"the worker process {worker.name} exited (code {worker.process.exitcode})"
                await self._gone(worker, why)
                continue
            age = now - worker.beat
            if worker.busy() and age > self.settings.hang_seconds:
                jobs = worker.jobs()
                log.error("worker %s silent for %.0f s on job(s) %s: killing it", worker.name, age, jobs)
                worker.process.kill()
                await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 10)
                why = f"the worker hung for {age:.0f} s on job {jobs[0]} and was restarted"
                await self._gone(worker, why)
        self._publish()

    async def _gone(self, worker: WorkerProcess, why: str) -> None:
        self._on_readable(worker)  # read whatever it said before dying
        self._detach(worker)
        held = worker.jobs()
        worker.process, worker.ready = None, False
        worker.restarts += 1
        worker.error = why
        log.error("%s", why)
        for slot in worker.slots.values():
            slot.state, slot.job_id, slot.pid = "restarting", None, None
        # In a thread: SQLite may wait on a writer and a crashed job's move to failed/ may cross
        # filesystems; the event loop keeps answering the API and the page meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self._requeue_after, held, why)
        if held:
            worker.crashes_without_job = 0
            delay = 0.0
        else:
            worker.crashes_without_job += 1  # dying without a job: back off (e.g. broken GPU driver)
            cap = MAX_RESTART_DELAY if worker.waits_for_ready else MAX_RECONNECT_DELAY
            delay = min(cap, 2.0**worker.crashes_without_job)
        worker.restart_at = time.monotonic() + delay
        self._fail_start(f"the worker could not start: {why}")

    def _orphans(self) -> list[int]:
        """Jobs left 'processing' that no live process says it holds: claimed by the dead process just
        before it could say so. (A claim is followed at once by "busy", so this window is tiny.)"""
        held = {job for worker in self._processes if worker.alive() for job in worker.jobs()}
        processing = self.store.list(state="processing", limit=1000).jobs
        return [job.id for job in processing if job.id not in held]

    def _requeue_after(self, held: list[int], why: str) -> None:
        self._requeue(held + self._orphans(), why)

    def _requeue(self, job_ids: list[int], why: str) -> None:
        for job_id in sorted(set(job_ids)):
            result = self.store.requeue_interrupted(self.settings.max_attempts, job_id)
            for job in result.failed:
                log.error("job %d failed after %d attempts", job.id, job.attempts)
                move_to_failed(self.settings, self.store, job, job.error or why, CRASH_ADVICE)
            if result.requeued:
                log.info("requeued job(s) %s after the worker stopped", result.requeued)

    # -- what health and the watchdog see ---------------------------------------------------------------

    def healthy(self) -> bool:
        """What WATCHDOG=1 vouches for: every worker process alive, loaded and heart-beating. While one
        is being replaced pings stop; if that takes longer than WatchdogSec, systemd restarts us."""
        now = time.monotonic()
        for worker in self._processes:
            if not worker.alive():
                if self._waiting_for_cluster(worker):
                    continue  # a lost Ray head is not ours to fix by restarting: reconnecting with backoff
                return False
            if not worker.ready:
                return not self.health.get("ready")  # first start: READY=1 itself waits for the models
            if now - worker.beat >= self.settings.hang_seconds:
                return False
        return True

    def _waiting_for_cluster(self, worker: WorkerProcess) -> bool:
        unreachable = self.cluster is not None and self.cluster.get("state") == "unreachable"
        return not worker.waits_for_ready and unreachable and worker.restart_at is not None

    def slots(self) -> list[Slot]:
        return [slot for worker in self._processes for slot in worker.slots.values()]

    def _publish(self) -> None:
        """Health's per-worker list plus the one-worker summary fields older clients read."""
        now = time.monotonic()
        slots = self.slots()
        busy = [slot for slot in slots if slot.state == "busy"]
        first = self._processes[0]
        states = {slot.state for slot in slots}
        summary = "busy" if busy else next(iter(states)) if len(states) == 1 else "mixed"
        if not slots:
            summary = "loading models" if first.alive() else "restarting"
        self.health.update(
            executor=self.settings.executor,
            workers=[slot.to_dict(now) for slot in slots],
            cluster=self.cluster,
            worker_state=summary,
            worker_alive=any(worker.alive() for worker in self._processes),
            worker_pid=first.process.pid if first.process is not None else None,
            worker_restarts=sum(worker.restarts for worker in self._processes),
            worker_error=next((w.error for w in self._processes if w.error), None),
            current_job_id=busy[0].job_id if busy else None,
        )

    # -- pausing and stopping --------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    async def stop(self, grace_seconds: float) -> None:
        """Let each running image finish within the grace time, else kill; requeue without counting."""
        self._stop.set()
        self._wake.set()
        deadline = time.monotonic() + grace_seconds
        while any(w.alive() for w in self._processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            for worker in self._processes:
                self._on_readable(worker)
        for worker in self._processes:
            if worker.alive():
                log.warning(
                    "the current image did not finish within %g s: requeueing job(s) %s",
                    grace_seconds,
                    worker.jobs(),
                )
                worker.process.kill()
                await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 10)
            self._on_readable(worker)
            self._detach(worker)
            worker.process = None
            for slot in worker.slots.values():
                slot.state, slot.job_id, slot.pid = "stopped", None, None
        for job in self.store.list(state="processing", limit=1000).jobs:
            self.store.requeue(job.id, refund_attempt=True)  # a stop is not the file's fault
        self._publish()
        self.health.update(worker_alive=False, worker_state="stopped")
