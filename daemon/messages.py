"""What a worker process tells the pool (daemon/worker_pool.py), one small frozen dataclass per kind of news.

A slot is one job-running loop (daemon.job_loop.Worker): a local worker process runs one; the Ray client
process runs one per actor. Every slot message names its slot ("w1", "r2", ...), so the pool follows
several slots over one pipe. Messages cross process boundaries by pickling, so they hold plain data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ready:
    """The models are loaded; `engine` is the backend's own account (backend, device, models...)."""

    slot: str
    engine: dict[str, Any]


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
    """The job left the slot in `state` (done, failed, cancelled, queued again)."""

    slot: str
    job_id: int
    state: str
    report: dict[str, Any] | None


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
    """A Ray slot's actor loaded its models on a node; `device` names where, `details` its account."""

    slot: str
    device: str
    details: dict[str, Any]


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
