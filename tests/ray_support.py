"""A real local Ray cluster for tests and benchmarks: a head (and optionally more nodes) as child processes.

Each node is `ray start --block` (through tests/ray_node.py: loopback only) in its own session, with a
fresh temp dir and free ports, so it never meets another cluster on this machine. Like every cluster the
project runs, it uses Ray's token authentication (RAY_AUTH_MODE=token): the token is a file of its own,
`cluster.token_file`; `cluster.env` is what a node or driver needs, `cluster.daemon_env` what a
`restorer serve` needs (the path in RESTORER_RAY_TOKEN_FILE; the daemon sets Ray's variables itself).
It is stopped by SIGKILL of every process in its session, by pid (never `ray stop`, which kills every Ray
process on the machine). PR_SET_PDEATHSIG takes a node's `ray start` down with the test process if that
is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from daemon.ray_token import ray_auth_env, write_new_token
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"  # read-only queries (`ray status`)
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # offline and private: no usage report
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every Ray process stays on 127.0.0.1 (see ray_node.py)
}


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL when the test process dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free now, so clusters never collide with each other."""
    low = free_port()
    flags = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--runtime-env-agent-port": free_port(),
        "--metrics-export-port": free_port(),
    }
    args = [f"{flag}={port}" for flag, port in flags.items()]
    # Worker processes need a range; a window above a free port is free in practice on a test box.
    return [*args, f"--min-worker-port={low}", f"--max-worker-port={min(65000, low + 200)}"]


@dataclass
class RayNode:
    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every live process of this node: its session (raylet, GCS, agents, workers) plus anything
        naming its temp dir. Ray renames its processes (`ray::...`), so the session is what finds them."""
        return sorted(set(pids_in_session(self.proc.pid)) | set(pids_naming(self.temp_dir)))

    def kill(self) -> None:
        """SIGKILL every process of the node (by pid, never `ray stop`) and reap the leader."""
        for _ in range(3):  # a dying raylet may still be starting a worker: look again
            for pid in self.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            if not self.pids():
                return
            time.sleep(0.2)


@dataclass
class RayCluster:
    """`address` is host:port, as `ray start --address` and the daemon's ray_address take it."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="rt", dir="/tmp")))
    port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_file = self.root / "ray_token"
        write_new_token(self.token_file)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a node or a driver of this cluster: Ray's own variables, token included."""
        return {**RAY_ENV, **ray_auth_env(self.token_file)}

    @property
    def daemon_env(self) -> dict[str, str]:
        """What `restorer serve --executor ray` needs to join this cluster: the token's path only."""
        return {**RAY_ENV, "RESTORER_RAY_TOKEN_FILE": str(self.token_file)}

    @property
    def head(self) -> RayNode:
        return self.nodes[0]

    def start_head(self, num_cpus: int = 2, resources: str | None = None) -> RayNode:
        args = ["--head", f"--port={self.port}", "--include-dashboard=false"]
        args.append("--node-ip-address=127.0.0.1")
        node = self._start_with_retries("head", [*args, f"--num-cpus={num_cpus}"], resources, 1)
        if self.nodes:
            self.nodes[0] = node  # a restarted head replaces the old one
        else:
            self.nodes.append(node)
        return node

    def add_node(self, num_cpus: int = 2, resources: str | None = None) -> RayNode:
        args = [f"--address={self.address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}"]
        expected = 1 + sum(1 for n in self.nodes if n.alive())
        node = self._start_with_retries(f"node{len(self.nodes)}", args, resources, expected)
        self.nodes.append(node)
        return node

    def _start_with_retries(
        self, name: str, args: list[str], resources: str | None, expected: int
    ) -> RayNode:
        # Ray gives a starting raylet a fixed 30 s to register; on a loaded 2-core box that can run out.
        for attempt in range(3):
            node = self._start(name, args, resources)
            try:
                self.wait_for_nodes(expected, node)
                return node
            except (RuntimeError, TimeoutError):
                node.kill()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _start(self, name: str, args: list[str], resources: str | None) -> RayNode:
        # A short temp dir: Ray's socket paths must fit in 107 bytes.
        temp_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))
        log_path = self.root / f"{name}-{time.monotonic_ns()}.log"
        extra = [f"--resources={resources}"] if resources else []
        command = [sys.executable, "-m", "tests.ray_node", "start", "--block", f"--temp-dir={temp_dir}"]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*command, *args, *_node_ports(), *extra],
                env={**os.environ, **self.env, "PYTHONPATH": str(REPO)},  # actors import daemon/
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # only a prctl between fork and exec: no locks taken
            )
        return RayNode(proc, temp_dir, log_path)

    def wait_for_nodes(self, count: int, starting: RayNode | None = None, timeout: float = 90.0) -> None:
        """Until `ray status` (a read-only query) lists `count` live nodes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in [starting] if starting else self.nodes:
                if not node.alive():
                    raise RuntimeError(f"a Ray node exited:\n{node.log_path.read_text()[-3000:]}")
            if self.live_nodes() >= count:
                return
            time.sleep(0.5)
        raise TimeoutError(f"Ray cluster at {self.address} did not reach {count} node(s)")

    def live_nodes(self) -> int:
        result = subprocess.run(
            [str(RAY), "status", f"--address={self.address}"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            return 0
        active = result.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))

    def kill_head(self) -> None:
        self.head.kill()

    def pids(self) -> list[int]:
        return sorted({pid for node in self.nodes for pid in node.pids()} | set(pids_naming(self.root)))

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        for pid in pids_naming(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


def _stat_fields(pid_dir: Path) -> list[str]:
    return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()


def pids_in_session(session: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `session`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry)
        except (OSError, IndexError):
            continue
        if fields[3] == str(session) and fields[0] != "Z":  # state, ppid, pgrp, session
            found.append(int(entry.name))
    return found


def pids_naming(text: Path | str) -> list[int]:
    """Live processes whose command line mentions `text` (our temp dir), excluding zombies."""
    needle = str(text).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "cmdline").read_bytes() and _stat_fields(entry)[0] != "Z":
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue
    return found


def assert_token_out_of_sight(token: str, daemon_pid: int, daemon_log: str) -> None:
    """The Ray token is not in the daemon's log, nor on the command line or in the environment of the
    daemon or any of its descendants (its Ray driver child and whatever that started)."""
    assert token and token not in daemon_log
    family = [daemon_pid, *_descendants(daemon_pid)]
    assert len(family) >= 2, family  # the daemon and its Ray driver child at least
    for pid in family:
        for part in ("cmdline", "environ"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                assert token.encode() not in Path(f"/proc/{pid}/{part}").read_bytes(), (pid, part)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(entry)[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
