"""What crosses between the worker pool (daemon/worker_pool.py) and its processes, as frozen dataclasses:
the ChildSpec a process is started with, and one small message per kind of news it sends back.

A slot is one job-running loop (daemon.job_loop.Worker): a local worker process runs one; the Ray client
process runs one per actor. Every slot message names its slot ("w1", "r2", ...), so the pool follows
several slots over one pipe. Messages cross the pipe by pickling (a child the daemon started itself), so
they hold plain data. The EngineAccount also comes back from Ray actors on other machines: there it
travels as JSON (to_json / from_json, every field checked), never pickled (docs/security.md, R4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.synchronize import Event

    from daemon.job_loop import ProcessorFactory

MAX_TEXT_CHARS = 4000  # an error message or an engine field, as the page would show it
MAX_MODELS = 256  # models in an engine account: the registry holds a few dozen
MAX_MODEL_FIELDS = 32
_ENGINE_TEXTS = ("backend", "device", "precision", "reason")


@dataclass(frozen=True)
class ChildSpec:
    """Everything a worker process (daemon.job_loop.worker_main) or the Ray client process
    (daemon.ray_executor.ray_client_main) starts with. Handed over by multiprocessing when the child is
    spawned, the only time the pipe end and the events may be pickled."""

    name: str  # the process's name; a local worker's one slot has the same name
    settings_json: str  # the settings without secrets the child does not need; validated again there
    processor_factory: ProcessorFactory  # a module-level name: it pickles by reference
    conn: Connection  # the child's end of the pipe: WorkerMessages go out through it
    stop: Event  # set: finish the current image, then exit
    wake: Event  # set: look at the queue now (new job, resume)
    paused: Event  # set: claim nothing new
    log_level: int


@dataclass(frozen=True)
class EngineAccount:
    """Which engine restores, in the backend's own words: backend, device, precision and why it was chosen.
    A warm-up's account also lists the models and face weights found (pipeline.ModelStatus.to_dict());
    a finished job's (from_report) names none, so `models` is None there. Health and the page show it."""

    backend: str | None = None
    device: str | None = None
    precision: str | None = None
    reason: str | None = None
    models: tuple[Mapping[str, object], ...] | None = None  # each line: short texts, flags or null

    @classmethod
    def from_report(cls, report: Mapping[str, Any] | None) -> EngineAccount | None:
        """What a job's report says about the engine that restored it; None when it names no backend
        (a refused or failed job)."""
        if not report or not report.get("backend"):
            return None
        backend, device, precision, reason = (
            value if isinstance(value, str) else None
            for value in (report.get(key) for key in ("backend", "device", "precision", "backend_reason"))
        )
        return cls(backend, device, precision, reason)

    def to_json(self) -> dict[str, object]:
        """A JSON object with exactly the fields, as from_json reads it back."""
        models = None if self.models is None else [dict(model) for model in self.models]
        return {**{key: getattr(self, key) for key in _ENGINE_TEXTS}, "models": models}

    @classmethod
    def from_json(cls, value: object) -> EngineAccount:
        """The account from a decoded JSON value another machine sent: exactly the fields of to_json, each
        a short text or null, models a bounded list of flat objects. ValueError says what is wrong."""
        if not isinstance(value, dict) or set(value) != {*_ENGINE_TEXTS, "models"}:
            raise ValueError("the engine account is not an object with exactly its fields")
        for key in _ENGINE_TEXTS:
            if not _short_text_or_none(value[key]):
                raise ValueError(f"the engine account's {key} is not short text")
        texts = {key: value[key] for key in _ENGINE_TEXTS}
        models = value["models"]
        if models is None:
            return cls(**texts)
        if not isinstance(models, list) or len(models) > MAX_MODELS or not all(map(_flat_model, models)):
            raise ValueError("the engine account's models are not a short list of flat objects")
        return cls(**texts, models=tuple(models))


def _short_text_or_none(value: object) -> bool:
    return value is None or (isinstance(value, str) and len(value) <= MAX_TEXT_CHARS)


def _flat_model(model: object) -> bool:
    """One model's line: at most MAX_MODEL_FIELDS short names, each holding short text, a flag or null."""
    if not isinstance(model, dict) or len(model) > MAX_MODEL_FIELDS:
        return False
    return all(
        isinstance(key, str) and len(key) <= 100 and (isinstance(item, bool) or _short_text_or_none(item))
        for key, item in model.items()
    )


@dataclass(frozen=True)
class Ready:
    """The models are loaded; `engine` is the backend's own account."""

    slot: str
    engine: EngineAccount


@dataclass(frozen=True)
class Fatal:
    """The slot cannot start (weights missing, backend unusable); `message` says why in one line."""

    slot: str
    message: str


@dataclass(frozen=True)
class Beat:
    """Still alive; `job_id` is the job in hand, None when idle."""

    slot: str
    job_id: int | None


@dataclass(frozen=True)
class Busy:
    """The slot claimed `job_id` and is working on it."""

    slot: str
    job_id: int


@dataclass(frozen=True)
class Finished:
    """The job left the slot in `state` (done, failed, cancelled, queued again); `engine` is what its
    report says about the engine that restored it (None when nothing was restored)."""

    slot: str
    job_id: int
    state: str
    engine: EngineAccount | None


@dataclass(frozen=True)
class DiskFull:
    """Publishing failed for lack of space: intake should pause until `needed_bytes` are free."""

    slot: str
    job_id: int
    needed_bytes: int
    message: str


@dataclass(frozen=True)
class Waiting:
    """A Ray slot without a live actor (no node has room, or the actor could not start)."""

    slot: str
    reason: str


@dataclass(frozen=True)
class Placed:
    """A Ray slot's actor loaded its models on a node; `device` names where, `pid` is its process there."""

    slot: str
    device: str
    pid: int


@dataclass(frozen=True)
class SlotsAnnounced:
    """The Ray client's slots, as (slot id, device) pairs, once it knows the cluster."""

    slots: list[tuple[str, str]]


@dataclass(frozen=True)
class ClusterState:
    """The Ray client's account of its cluster ("connecting" | "connected" | "unreachable"); it is
    also that process's heartbeat."""

    state: str
    details: dict[str, Any]


SlotMessage = Ready | Fatal | Beat | Busy | Finished | DiskFull | Waiting | Placed
WorkerMessage = SlotMessage | SlotsAnnounced | ClusterState
