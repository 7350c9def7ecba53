"""executor = "ray": jobs run on Ray actors on other machines; the daemon keeps the folders and the database.

This module runs in a supervised CHILD process of the daemon (daemon/workers.py), never in the daemon's
own: when a Ray head (GCS) dies, Ray kills the driver process after a timeout, and that must cost a
restart of this process, not the service. Here:

  main thread    connects to the cluster (a TCP probe first, so an absent head fails in seconds, not
                 minutes), decides how many actors (ray_actors: a number, or "auto" = one per GPU in the
                 cluster, else one per node), starts one slot thread per actor, and reports the
                 cluster's state to the pool every few seconds (which is also this process's heartbeat).
  slot threads   one per actor. Each runs daemon/worker.py's Worker loop on this machine: claim in
                 arrival order -> read the input -> ActorProcessor.process (ship the bytes and options to
                 the actor, which runs the same processor the local worker runs, and get the output
                 bytes and the report back) -> publish -> finish -> dispose. So actors never touch the
                 share, the database or the outbox.

Progress: the actor records each progress callback; the slot polls it a few times a second and feeds it
to the same throttled progress writer the local worker uses, which also heart-beats the slot. An actor
that makes no progress for hang_seconds is killed.
Faults: a killed actor or node makes the in-flight call raise; the Worker requeues that job (attempt
counted, failed at max_attempts) and the slot starts a new actor (Ray places it on any node with room;
until one has, the slot waits and claims nothing). A lost head kills this process; the pool requeues
its jobs, health says "Ray cluster unreachable", and restarts it with backoff until the head is back.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from daemon.logs import configure_logging
from daemon.messages import Beat, ClusterState, Placed, SlotsAnnounced, Waiting, WorkerMessage
from daemon.settings import Settings
from daemon.store import JobStore
from daemon.worker import JobCancelled, Processed, ProcessorFactory, Worker
from pipeline import ProgressCallback, RestoreOptions

log = logging.getLogger(__name__)

# Set before Ray is imported in this process. Ray's default makes a driver wait 60 s for a lost GCS
# before it kills itself; 10 s turns a dead head into "unreachable" on the page sooner.
DRIVER_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_gcs_rpc_server_reconnect_timeout_s": "10"}
CONNECT_PROBE_SECONDS = 5.0  # TCP connect to the head before ray.init (which retries for minutes)
CONNECT_LIMIT_SECONDS = 60.0  # ray.init taking longer than this: give up, the pool retries later
CLUSTER_REPORT_SECONDS = 2.0
PROGRESS_POLL_SECONDS = 0.25  # at most four progress reads per second per running job
ACTOR_READY_SECONDS = 10.0  # how long one wait for an actor's models lasts before re-checking stop
ACTOR_RETRY_SECONDS = 5.0
EXIT_UNREACHABLE = 3


class ActorHung(Exception):
    """The actor made no progress for hang_seconds and was killed."""


class ClusterUnreachable(Exception):
    """The head does not answer at ray_address."""


# -- the actor (runs on a Ray node) ---------------------------------------------------------------------


class RestoreActor:
    """Holds one processor (models loaded once) and runs one image at a time. Threaded (two calls at
    once), so progress() and cancel() answer while process() runs."""

    def __init__(self, settings_json: str, processor_factory: ProcessorFactory) -> None:
        settings = Settings.model_validate_json(settings_json)
        self._processor = processor_factory(settings)
        self._info = self._processor.warm_up(settings.restore_options())
        self._lock = threading.Lock()
        self._progress: tuple[int, str | None, int, int] = (0, None, 0, 0)
        self._cancel = False

    def ready(self) -> dict[str, Any]:
        """The engine account plus where this actor runs (for health and the page)."""
        return {**self._info, "host": socket.gethostname(), "pid": os.getpid()}

    def process(self, data: bytes, options: RestoreOptions) -> tuple[bytes, str, str, dict[str, Any]]:
        with self._lock:
            self._progress, self._cancel = (0, None, 0, 0), False
        processed = self._processor.process(data, options, self._on_progress)
        output = processed.data
        if processed.file is not None:  # a large output encoded on disk: Ray returns bytes
            with processed.file:
                processed.file.seek(0)
                output = processed.file.read()
        return output, processed.format, self._processor.extension(processed.format), processed.report

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._progress = (self._progress[0] + 1, stage, done, total)
            if self._cancel:
                raise JobCancelled()

    def progress(self) -> tuple[int, str | None, int, int]:
        """(number of callbacks so far, stage, done, total)."""
        with self._lock:
            return self._progress

    def cancel(self) -> None:
        with self._lock:
            self._cancel = True


# -- the driver side (this child process of the daemon) -------------------------------------------------


class ActorProcessor:
    """The Processor seam for one actor: the Worker calls it exactly like the local pipeline."""

    def __init__(self, actor: Any, hang_seconds: float) -> None:
        self.actor = actor
        self.hang_seconds = hang_seconds
        self.dead = False  # set when the actor died or was killed: the slot replaces it
        self._extensions: dict[str, str] = {}

    def warm_up(self, options: RestoreOptions) -> dict[str, Any]:
        import ray

        return dict(ray.get(self.actor.ready.remote()))

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        import ray

        try:
            result = self._wait(ray.put(data), options, on_progress)
        except ray.exceptions.RayActorError:
            self.dead = True  # the Worker requeues the job; the slot starts a new actor
            raise
        except ray.exceptions.RayTaskError as exc:
            # The processor's own error (a bad image, a missing weight file): raise it as itself, so
            # the Worker handles it exactly as for a local worker and users read its message, not
            # Ray's remote traceback.
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, Exception) else exc) from None
        output, fmt, extension, report = result
        self._extensions[fmt] = extension
        return Processed(output, fmt, report)

    def _wait(self, data_ref: Any, options: RestoreOptions, on_progress: ProgressCallback | None) -> Any:
        import ray

        call = self.actor.process.remote(data_ref, options)
        seen, changed_at = 0, time.monotonic()
        while True:
            done, _ = ray.wait([call], timeout=PROGRESS_POLL_SECONDS)
            if done:
                return ray.get(call)
            try:
                count, stage, step, total = ray.get(self.actor.progress.remote(), timeout=self.hang_seconds)
            except ray.exceptions.GetTimeoutError:
                ray.kill(self.actor)  # not even its progress answers: its node is wedged
                self.dead = True
                raise ActorHung(
                    f"the Ray actor did not answer for {self.hang_seconds:.0f} s and was killed"
                ) from None
            if count != seen:
                seen, changed_at = count, time.monotonic()
                if on_progress is not None and stage is not None:
                    try:
                        on_progress(stage, step, total)
                    except JobCancelled:
                        self.actor.cancel.remote()
                        ray.wait([call], timeout=self.hang_seconds)  # let it stop before the next job
                        raise
            elif time.monotonic() - changed_at > self.hang_seconds:
                ray.kill(self.actor)
                self.dead = True
                raise ActorHung(
                    f"the Ray actor made no progress for {self.hang_seconds:.0f} s and was killed"
                )

    def extension(self, fmt: str) -> str:
        return self._extensions.get(fmt, f".{fmt}")


@dataclass
class ActorResources:
    num_cpus: float
    num_gpus: float
    resources: dict[str, float]

    def label(self) -> str:
        return f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU"


def actor_plan(settings: Settings, cluster: dict[str, float], alive_nodes: int) -> tuple[int, ActorResources]:
    """How many actors, each with which resources: num_gpus = 1 where the cluster has GPUs (unless set),
    actors = one per GPU for "auto", else one per node."""
    gpus = int(cluster.get("GPU", 0))
    num_gpus = settings.ray_num_gpus if settings.ray_num_gpus is not None else (1.0 if gpus else 0.0)
    if isinstance(settings.ray_actors, int):
        count = settings.ray_actors
    else:
        count = gpus if gpus and num_gpus else max(1, alive_nodes)
    return count, ActorResources(settings.ray_num_cpus, num_gpus, dict(settings.ray_resources))


class ActorSlot(threading.Thread):
    """One actor and the Worker loop that feeds it, on its own thread with its own store connection."""

    def __init__(self, client: RayClient, slot_id: str) -> None:
        super().__init__(name=f"ray-{slot_id}", daemon=True)
        self.client = client
        self.slot_id = slot_id
        self.processor: ActorProcessor | None = None

    def send(self, message: WorkerMessage) -> None:
        self.client.send(message)

    def run(self) -> None:
        store = JobStore(self.client.settings.db_path)
        try:
            while not self.client.stop.is_set():
                if self.processor is None or self.processor.dead:
                    self.processor = self._new_actor()
                    continue
                worker = Worker(self.client.settings, store, self.processor, self.send, self.slot_id)
                self._work(worker)
        finally:
            store.close()

    def _new_actor(self) -> ActorProcessor | None:
        """Start an actor and wait until its models are loaded; None (after a pause) if it cannot."""
        import ray

        client = self.client
        resources = client.resources
        actor_class = ray.remote(RestoreActor).options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            resources=resources.resources or None,
            max_concurrency=2,  # process() plus progress()/cancel() polls
            max_restarts=0,  # a dead actor is replaced here, after its job went back to the queue
            scheduling_strategy="SPREAD",  # across boxes: one switched off costs as few actors as possible
        )
        actor = actor_class.remote(client.settings_json, client.processor_factory)
        while not client.stop.is_set():
            try:
                info = ray.get(actor.ready.remote(), timeout=ACTOR_READY_SECONDS)
            except ray.exceptions.GetTimeoutError:
                self.send(Waiting(self.slot_id, "no node has room for this actor yet"))
                continue
            except ray.exceptions.RayError as exc:
                log.error("slot %s: the actor could not start: %s", self.slot_id, exc)
                self.send(Waiting(self.slot_id, f"the actor could not start: {type(exc).__name__}"))
                client.stop.wait(ACTOR_RETRY_SECONDS)
                return None
            self.send(Placed(self.slot_id, f"ray {info.get('host', '?')} ({resources.label()})", info))
            return ActorProcessor(actor, client.settings.hang_seconds)
        return None

    def _work(self, worker: Worker) -> None:
        client = self.client
        assert self.processor is not None
        while not client.stop.is_set() and not self.processor.dead:
            if client.paused.is_set() or worker.run_one() is None:
                self.send(Beat(self.slot_id, None))
                client.wake.wait(client.settings.heartbeat_seconds)
                client.wake.clear()


class RayClient:
    """The Ray driver in this child process: connection, slots, and cluster reports."""

    def __init__(
        self,
        settings_json: str,
        processor_factory: ProcessorFactory,
        conn: Connection,
        stop: Event,
        wake: Event,
        paused: Event,
    ) -> None:
        self.settings_json = settings_json
        self.processor_factory = processor_factory
        self.settings = Settings.model_validate_json(settings_json)
        self.conn, self.stop, self.wake, self.paused = conn, stop, wake, paused
        self._send_lock = threading.Lock()
        self.slots: list[ActorSlot] = []
        self.resources = ActorResources(1.0, 0.0, {})

    def send(self, message: WorkerMessage) -> None:
        with self._send_lock:  # slot threads and the main thread share one pipe
            self.conn.send(message)

    def report(self, state: str, **details: Any) -> None:
        self.send(ClusterState(state, {"address": self.settings.ray_address, **details}))

    def connect(self) -> None:
        address = str(self.settings.ray_address)
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_PROBE_SECONDS).close()
        except (OSError, ValueError) as exc:
            raise ClusterUnreachable(f"no Ray head answers at {address} ({exc})") from None
        import ray

        timer = threading.Timer(CONNECT_LIMIT_SECONDS, self._connect_took_too_long)
        timer.daemon = True
        timer.start()
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise ClusterUnreachable(f"the Ray head at {address} refused the connection ({exc})") from None
        finally:
            timer.cancel()

    def _connect_took_too_long(self) -> None:
        self.report("unreachable", error=f"connecting took over {CONNECT_LIMIT_SECONDS:.0f} s")
        os._exit(EXIT_UNREACHABLE)

    def cluster_view(self) -> dict[str, Any]:
        import ray

        nodes = [node for node in ray.nodes() if node.get("Alive")]
        return {"nodes": len(nodes), "resources": ray.cluster_resources()}

    def start_slots(self) -> None:
        view = self.cluster_view()
        count, self.resources = actor_plan(self.settings, view["resources"], view["nodes"])
        self.slots = [ActorSlot(self, f"r{index}") for index in range(1, count + 1)]
        self.send(SlotsAnnounced([(slot.slot_id, f"ray ({self.resources.label()})") for slot in self.slots]))
        for slot in self.slots:
            slot.start()

    def run(self) -> None:
        self.report("connecting")
        try:
            self.connect()
        except ClusterUnreachable as exc:
            log.error("%s", exc)
            self.report("unreachable", error=str(exc))
            raise SystemExit(EXIT_UNREACHABLE) from None
        self.start_slots()
        while not self.stop.is_set():
            view = self.cluster_view()
            self.report("connected", nodes=view["nodes"], actors=len(self.slots))
            self.stop.wait(CLUSTER_REPORT_SECONDS)
        for slot in self.slots:
            slot.join()  # each finishes its current image; the pool kills us after stop_grace_seconds


def ray_client_main(
    settings_json: str,
    processor_factory: ProcessorFactory,
    conn: Connection,
    stop: Event,
    wake: Event,
    paused: Event,
    log_level: int,
    name: str,
) -> None:
    """Entry point of the Ray client process (the pool's common target signature, as
    daemon.worker.worker_main; `name` is the process's, its slots are named per actor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service owns signals, as for the local worker
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(log_level, "%(asctime)s %(levelname)s ray-client: %(message)s")
    os.environ.update(DRIVER_ENV)
    try:
        RayClient(settings_json, processor_factory, conn, stop, wake, paused).run()
    finally:
        conn.close()
