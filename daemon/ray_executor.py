"""executor = "ray": jobs run on Ray actors on other machines; the daemon keeps the folders and the database.

This module runs in a supervised CHILD process of the daemon (daemon/worker_pool.py), never in the daemon's
own: when a Ray head (GCS) dies, Ray kills the driver process after a timeout, and that must cost a
restart of this process, not the service. Here:

  main thread    connects to the cluster (a TCP probe first, so an absent head fails in seconds, not
                 minutes), decides how many actors (ray_actors: a number, or "auto" = one per GPU in the
                 cluster, else one per node), starts one slot thread per actor, and reports the
                 cluster's state to the pool every few seconds (which is also this process's heartbeat).
  slot threads   one per actor. Each runs daemon/job_loop.py's Worker loop on this machine: claim in
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

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from daemon.job_loop import JobCancelled, Processed, ProcessorFactory, Worker
from daemon.logs import configure_logging
from daemon.messages import (
    MAX_TEXT_CHARS,
    Beat,
    ChildSpec,
    ClusterState,
    EngineAccount,
    Placed,
    SlotsAnnounced,
    Waiting,
    WorkerMessage,
)
from daemon.ray_token import RayTokenError, use_ray_token
from daemon.settings import Settings
from daemon.store import JobStore
from pipeline import BadImageError, ProgressCallback, RestoreError, RestoreOptions

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


# -- what crosses the wire: bytes only ---------------------------------------------------------------
#
# Ray serialises a return value with pickle unless it is `bytes`, which it hands over raw. So every actor
# method returns bytes, and the options go out as JSON text: nothing the daemon receives from a node is
# unpickled, and everything it gets is checked here (types, sizes) before the Worker sees it. A process
# reply is a 4-byte big-endian header length, a UTF-8 JSON header, then the output file's bytes (the
# daemon.job_loop.Processed the actor made, rebuilt as one on this side):
#   {"ok": true, "format": "png", "extension": ".png", "report": {...}}
#   {"ok": false, "error": {"kind": "bad-input" | "restore" | "cancelled" | "error", "type": "...",
#                           "message": "..."}}
# ready() answers {"host": "...", "pid": 123, "engine": EngineAccount.to_json()} (ActorReady), or
# {"error": "..."} when the actor's processor could not be made.
# What remains is Ray's own control plane (task specs, actor handles, errors), which the cluster's token
# protects (docs/security.md, rows R1-R6; R4 is this protocol).

MAX_HEADER_BYTES = 1 << 20  # a report with hundreds of faces is a few tens of KB
FORMAT_PATTERN = re.compile(r"[a-z0-9]{1,10}")
EXTENSION_PATTERN = re.compile(r"\.[a-z0-9]{1,10}")
ERROR_KINDS = ("bad-input", "restore", "cancelled", "error")


class ActorReplyError(Exception):
    """An actor's answer is not what this protocol allows (wrong type, size or shape): the actor is
    killed, the job counts an attempt."""


class ActorFailedError(Exception):
    """The processor on the actor raised something the pipeline does not name (counts as an attempt)."""


def encode_reply(header: dict[str, Any], data: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":"), default=str).encode()
    return len(head).to_bytes(4, "big") + head + data


def encode_failure(exc: BaseException) -> bytes:
    if isinstance(exc, JobCancelled):
        kind = "cancelled"
    elif isinstance(exc, BadImageError):
        kind = "bad-input"
    elif isinstance(exc, RestoreError):
        kind = "restore"
    else:
        kind = "error"
    message = str(exc)[:MAX_TEXT_CHARS] or type(exc).__name__
    error = {"kind": kind, "type": type(exc).__name__, "message": message}
    return encode_reply({"ok": False, "error": error})


def encode_json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def decode_json(blob: object, limit: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """A JSON object an actor sent as bytes, checked for type and size."""
    if not isinstance(blob, bytes):
        raise ActorReplyError(f"the actor answered with {type(blob).__name__}, not bytes")
    if len(blob) > limit:
        raise ActorReplyError(f"the actor's answer has {len(blob)} bytes of JSON (at most {limit})")
    try:
        value = json.loads(blob)
    except (ValueError, RecursionError):
        raise ActorReplyError("the actor's answer is not JSON") from None
    if not isinstance(value, dict):
        raise ActorReplyError(f"the actor's answer is a JSON {type(value).__name__}, not an object")
    return value


def encode_processed(processed: Processed) -> bytes:
    """One process() call's output and report, as decode_reply reads them back. A large output was
    encoded into a scratch file: a Ray reply carries bytes, so the actor's memory holds it once, on its
    way back (the file is closed here)."""
    header = {
        "ok": True,
        "format": processed.format,
        "extension": processed.extension,
        "report": processed.report,
    }
    if processed.file is None:
        return encode_reply(header, processed.data)
    with processed.file:
        processed.file.seek(0)
        return encode_reply(header, processed.file.read())


def decode_reply(blob: object, max_output_bytes: int) -> Processed:
    """The output and report of one process() call; the processor's error raised as the Worker expects."""
    if not isinstance(blob, bytes):
        raise ActorReplyError(f"the actor answered with {type(blob).__name__}, not bytes")
    size = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if size < 0 or size > MAX_HEADER_BYTES or 4 + size > len(blob):
        raise ActorReplyError(f"the actor's answer has no valid header ({len(blob)} bytes)")
    header = decode_json(blob[4 : 4 + size])
    data = blob[4 + size :]
    if header.get("ok") is False:
        raise _actor_error(header.get("error"))
    if header.get("ok") is not True:
        raise ActorReplyError("the actor's answer says neither ok nor failed")
    fmt = _matching(header.get("format"), FORMAT_PATTERN, "format")
    extension = _matching(header.get("extension"), EXTENSION_PATTERN, "extension")
    report = header.get("report")
    if not isinstance(report, dict):
        raise ActorReplyError("the actor's report is not a JSON object")
    if not data or len(data) > max_output_bytes:
        raise ActorReplyError(f"the actor's output has {len(data)} bytes (1 to {max_output_bytes} allowed)")
    return Processed(data, fmt, extension, report)


def _matching(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ActorReplyError(f"the actor's {what} is not a short lowercase name: {str(value)[:40]!r}")
    return value


def _error_classes(base: type[Exception]) -> dict[str, type[Exception]]:
    """The pipeline's own error classes by name: an actor's error type picks one of these, or the base."""
    found = {base.__name__: base}
    for sub in base.__subclasses__():
        found.update(_error_classes(sub))
    return found


def _actor_error(error: object) -> Exception:
    if not isinstance(error, dict):
        return ActorReplyError("the actor's failure has no error object")
    kind, name, message = error.get("kind"), error.get("type"), error.get("message")
    if kind not in ERROR_KINDS or not isinstance(name, str) or not isinstance(message, str):
        return ActorReplyError("the actor's failure is not kind/type/message text")
    message = message[:MAX_TEXT_CHARS]
    if kind == "cancelled":
        return JobCancelled()
    bad_input = _error_classes(BadImageError)
    if kind == "bad-input":
        return bad_input.get(name, BadImageError)(message)
    if kind == "restore":
        # Not a bad-input class under another kind: the kind decides what the Worker does with the file.
        classes = {key: cls for key, cls in _error_classes(RestoreError).items() if key not in bad_input}
        return classes.get(name, RestoreError)(message)
    return ActorFailedError(f"{name[:100]}: {message}")


def max_output_bytes(settings: Settings, options: RestoreOptions) -> int:
    """The largest output the options allow: the biggest input scaled, uncompressed at 16-bit RGBA (8
    bytes a pixel), plus room for metadata. An actor's reply above it is refused."""
    pixels = settings.max_input_pixels * options.scale**2
    if options.max_output_megapixels is not None:
        pixels = min(pixels, options.max_output_megapixels * 1e6)
    return int(pixels * 8) + (64 << 20)


# -- the actor (runs on a Ray node) ---------------------------------------------------------------------


class RestoreActor:
    """Holds one processor (models loaded once) and runs one image at a time. Threaded (two calls at
    once), so progress() and cancel() answer while process() runs. Every method returns bytes (above)."""

    def __init__(self, settings_json: str, processor_factory: ProcessorFactory) -> None:
        self._lock = threading.Lock()
        self._progress = ActorProgress(0, None, 0, 0)
        self._cancel = False
        # A constructor that raises reaches the driver as a pickled exception: keep the failure as text
        # and let ready() report it instead.
        self._engine = EngineAccount()
        self._failure: str | None = None
        try:
            settings = Settings.from_child_json(settings_json)
            self._processor = processor_factory(settings)
            self._engine = self._processor.warm_up(settings.restore_options())
        except Exception as exc:
            self._failure = f"{type(exc).__name__}: {exc}"[:MAX_TEXT_CHARS]

    def ready(self) -> bytes:
        """Where this actor runs and its engine account (ActorReady), as JSON; or {"error": ...} when its
        processor could not be made."""
        if self._failure is not None:
            return encode_json({"error": self._failure})
        return ActorReady(socket.gethostname(), os.getpid(), self._engine).encode()

    def process(self, data: bytes, options_json: str) -> bytes:
        with self._lock:
            self._progress, self._cancel = ActorProgress(0, None, 0, 0), False
        try:
            options = RestoreOptions.model_validate_json(options_json)
            processed = self._processor.process(data, options, self._on_progress)
        except Exception as exc:  # every failure travels as JSON text, never as a pickled exception
            return encode_failure(exc)
        return encode_processed(processed)

    def _on_progress(self, stage: str, done: int, total: int) -> None:
        with self._lock:
            self._progress = ActorProgress(self._progress.count + 1, stage, done, total)
            if self._cancel:
                raise JobCancelled()

    def progress(self) -> bytes:
        """The progress so far (ActorProgress) as JSON."""
        with self._lock:
            return self._progress.encode()

    def cancel(self) -> bytes:
        with self._lock:
            self._cancel = True
        return b""


# -- the driver side (this child process of the daemon) -------------------------------------------------


@dataclass(frozen=True)
class ActorProgress:
    """What an actor's processor last reported, and how many reports it made (a hang shows as no change)."""

    count: int
    stage: str | None
    done: int
    total: int

    def encode(self) -> bytes:
        return encode_json(dataclasses.asdict(self))

    @classmethod
    def decode(cls, blob: object) -> ActorProgress:
        value = decode_json(blob)
        count, done, total = (_count(value, key) for key in ("count", "done", "total"))
        stage = value.get("stage")
        if stage is not None and not (isinstance(stage, str) and len(stage) <= 100):
            raise ActorReplyError("the actor's progress stage is not a short text")
        return cls(count, stage, done, total)


def _count(value: dict[str, Any], key: str) -> int:
    number = value.get(key)
    if not isinstance(number, int) or isinstance(number, bool) or number < 0:
        raise ActorReplyError("the actor's progress counts are not non-negative integers")
    return number


@dataclass(frozen=True)
class ActorReady:
    """An actor's ready() answer: the host and process it runs in, and its engine account."""

    host: str
    pid: int
    engine: EngineAccount

    def encode(self) -> bytes:
        return encode_json({"host": self.host, "pid": self.pid, "engine": self.engine.to_json()})

    @classmethod
    def decode(cls, blob: object) -> ActorReady:
        """Checked: exactly host, pid and engine, of their types (EngineAccount.from_json for the last)."""
        value = decode_json(blob)
        if "error" in value:
            why = str(value["error"])[:MAX_TEXT_CHARS]
            raise ActorReplyError(f"the actor could not load its processor: {why}")
        if set(value) != {"host", "pid", "engine"}:
            raise ActorReplyError("the actor's account is not exactly host, pid and engine")
        host, pid = value["host"], value["pid"]
        if not isinstance(host, str) or len(host) > 255 or not isinstance(pid, int) or isinstance(pid, bool):
            raise ActorReplyError("the actor's account has no host name and pid")
        try:
            engine = EngineAccount.from_json(value["engine"])
        except ValueError as exc:
            raise ActorReplyError(str(exc)) from None
        return cls(host, pid, engine)


class ActorProcessor:
    """The Processor seam for one actor: the Worker calls it exactly like the local pipeline."""

    def __init__(self, actor: Any, settings: Settings) -> None:
        self.actor = actor
        self.settings = settings
        self.hang_seconds = settings.hang_seconds
        self.dead = False  # set when the actor died or was killed: the slot replaces it

    def warm_up(self, options: RestoreOptions) -> EngineAccount:
        import ray

        return ActorReady.decode(ray.get(self.actor.ready.remote())).engine

    def process(
        self, data: bytes, options: RestoreOptions, on_progress: ProgressCallback | None
    ) -> Processed:
        import ray

        try:
            blob = self._wait(ray.put(data), options, on_progress)
        except ray.exceptions.RayActorError:
            self.dead = True  # the Worker requeues the job; the slot starts a new actor
            raise
        try:
            return decode_reply(blob, max_output_bytes(self.settings, options))
        except ActorReplyError:
            ray.kill(self.actor)  # it broke the protocol: never trust this actor again
            self.dead = True
            raise

    def _wait(self, data_ref: Any, options: RestoreOptions, on_progress: ProgressCallback | None) -> Any:
        import ray

        call = self.actor.process.remote(data_ref, json.dumps(options.to_dict()))
        seen, changed_at = 0, time.monotonic()
        while True:
            done, _ = ray.wait([call], timeout=PROGRESS_POLL_SECONDS)
            if done:
                return ray.get(call)
            try:
                progress = ActorProgress.decode(
                    ray.get(self.actor.progress.remote(), timeout=self.hang_seconds)
                )
            except ray.exceptions.GetTimeoutError:
                ray.kill(self.actor)  # not even its progress answers: its node is wedged
                self.dead = True
                raise ActorHung(
                    f"the Ray actor did not answer for {self.hang_seconds:.0f} s and was killed"
                ) from None
            if progress.count != seen:
                seen, changed_at = progress.count, time.monotonic()
                if on_progress is not None and progress.stage is not None:
                    try:
                        on_progress(progress.stage, progress.done, progress.total)
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
        # Any: ray types an actor's methods only where they are decorated with @ray.method, which would
        # import ray with this module (the daemon starts without it)
        actor_class: Any = ray.remote(RestoreActor).options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            resources=resources.resources or None,
            max_concurrency=2,  # process() plus progress()/cancel() polls
            max_restarts=0,  # a dead actor is replaced here, after its job went back to the queue
            scheduling_strategy="SPREAD",  # across boxes: one switched off costs as few actors as possible
        )
        actor = actor_class.remote(client.spec.settings_json, client.spec.processor_factory)
        while not client.stop.is_set():
            try:
                ready = ActorReady.decode(ray.get(actor.ready.remote(), timeout=ACTOR_READY_SECONDS))
            except ray.exceptions.GetTimeoutError:
                self.send(Waiting(self.slot_id, "no node has room for this actor yet"))
                continue
            except (ray.exceptions.RayError, ActorReplyError) as exc:
                with contextlib.suppress(ray.exceptions.RayError, ValueError):
                    ray.kill(actor)  # a broken one is not kept
                log.error("slot %s: the actor could not start: %s", self.slot_id, exc)
                self.send(Waiting(self.slot_id, f"the actor could not start: {type(exc).__name__}"))
                client.stop.wait(ACTOR_RETRY_SECONDS)
                return None
            self.send(Placed(self.slot_id, f"ray {ready.host} ({resources.label()})", ready.pid))
            return ActorProcessor(actor, client.settings)
        return None

    def _work(self, worker: Worker) -> None:
        client = self.client
        assert self.processor is not None
        while not client.stop.is_set() and not self.processor.dead:
            if client.paused.is_set() or worker.run_one() is None:
                self.send(Beat(self.slot_id, None))
                client.wake.wait(client.settings.heartbeat_seconds)
                client.wake.clear()


def _causes(exc: BaseException) -> list[BaseException]:
    """exc and what it was raised from (ray.init wraps the GCS's refusal in a plain ConnectionError)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class RayClient:
    """The Ray driver in this child process: connection, slots, and cluster reports."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.settings = Settings.from_child_json(spec.settings_json)
        self.stop, self.wake, self.paused = spec.stop, spec.wake, spec.paused
        self._send_lock = threading.Lock()
        self.slots: list[ActorSlot] = []
        self.resources = ActorResources(1.0, 0.0, {})

    def send(self, message: WorkerMessage) -> None:
        with self._send_lock:  # slot threads and the main thread share one pipe
            self.spec.conn.send(message)

    def report(self, state: str, **details: Any) -> None:
        self.send(ClusterState(state, {"address": self.settings.ray_address, **details}))

    def connect(self) -> None:
        try:  # before Ray is imported: it reads the token's path once, from the environment
            use_ray_token(self.settings.ray_token_file)
        except RayTokenError as exc:
            raise ClusterUnreachable(str(exc)) from None
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
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            if any("InvalidAuthToken" in str(cause) for cause in _causes(exc)):
                raise ClusterUnreachable(
                    f"the Ray head at {address} refused the token in {self.settings.ray_token_file} "
                    "(InvalidAuthToken): every machine of the cluster needs the same token file"
                ) from None
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


def ray_client_main(spec: ChildSpec) -> None:
    """Entry point of the Ray client process (as daemon.job_loop.worker_main; `spec.name` is the
    process's, its slots are named per actor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service owns signals, as for the local worker
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    configure_logging(spec.log_level, "%(asctime)s %(levelname)s ray-client: %(message)s")
    os.environ.update(DRIVER_ENV)
    try:
        RayClient(spec).run()
    finally:
        spec.conn.close()
