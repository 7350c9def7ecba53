"""`restorer cluster`: run a node of the project's Ray cluster the one right way, and stop it.

  restorer cluster token FILE                       a new random token (mode 0600); copy it to every machine
  restorer cluster head [--bind IP] [--port N]      the head (GCS), e.g. on the NAS with --num-cpus 0
  restorer cluster join HOST:PORT [--bind IP]       a node (a GPU box) that joins the head
  restorer cluster stop [--temp-dir DIR]            stops the node started with that temp dir, by pid

Every node uses Ray's token authentication with `ray_token_file` (as `restorer serve`; RESTORER_RAY_TOKEN_FILE
or --ray-token-file; a node without a readable token does not start), the fixed ports of NODE_PORTS (the
ones docs/deploy.md tells to open), a private temp dir (mode 0700, owned by this user: Ray's sockets and
logs are not for other local users), `--num-gpus` = the CUDA devices this process sees, no dashboard and no
usage report. `head` and `join` run in the foreground (a systemd unit or a compose service keeps them);
SIGTERM or Ctrl-C stops the node's processes by pid. Never `ray stop`: it kills every Ray process of the
machine, other users' clusters included.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.flags import add_settings_flags, settings_from_args

log = logging.getLogger(__name__)

HEAD_PORT = 6379  # the GCS: every node and the daemon's driver connect to it
# Fixed, so a firewall can name them; Ray picks random ones otherwise. docs/deploy.md lists which
# must be reachable from the other machines of the cluster.
NODE_PORTS: dict[str, int] = {
    "--node-manager-port": 6380,  # the raylet: other nodes and drivers lease workers from it
    "--object-manager-port": 6381,  # object transfers between nodes (photos in, results out)
    "--dashboard-agent-grpc-port": 6382,  # this node's agent (local use)
    "--dashboard-agent-listen-port": 6383,  # the agent's HTTP side (local use)
    "--runtime-env-agent-port": 6384,  # local use
    "--metrics-export-port": 6385,  # local use
}
WORKER_PORTS = (10002, 10100)  # each worker and driver process: actors' calls and their results
PID_FILE = "restorer-node.json"  # in the temp dir: what `restorer cluster stop` stops
STOP_GRACE_SECONDS = 10.0


class PrivateDirError(Exception):
    """The temp dir exists and other users could reach it, or it is not ours."""


def default_temp_dir() -> Path:
    # Under systemd, the unit's StateDirectory= (private to the service user); else one per user in /tmp.
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0]) / "ray"
    return Path(f"/tmp/restorer-ray-{os.geteuid()}")


def private_dir(path: Path) -> Path:
    """`path` as a directory only this user can enter, created 0700 if absent. An existing one must be
    ours, not a symlink and closed to others: a folder another user made in /tmp is refused, not used."""
    path = path.absolute()
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PrivateDirError(f"{path} is not a plain folder (a symlink or a file): refused as the temp dir")
    if info.st_uid != os.geteuid():
        raise PrivateDirError(
            f"{path} belongs to uid {info.st_uid}, not to this user: refused as the temp dir"
        )
    if info.st_mode & 0o077:
        raise PrivateDirError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}; other users could reach the node's sockets: "
            f"`chmod 700 {path}` or choose another --temp-dir"
        )
    return path


# -- the parser ------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "cluster",
        help="run a Ray node of the cluster (token auth, fixed ports) or stop one",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="cluster_action", required=True, metavar="ACTION")

    token = actions.add_parser("token", help="write a new random token to FILE (mode 0600)")
    token.add_argument("file", type=Path, metavar="FILE")
    token.set_defaults(run=run_token)

    head = actions.add_parser("head", help="start the head node (foreground)")
    head.add_argument("--port", type=int, default=HEAD_PORT, help=f"the GCS port (default {HEAD_PORT})")
    _node_flags(head)
    head.set_defaults(run=run_head)

    join = actions.add_parser("join", help="start a node that joins the head at HOST:PORT (foreground)")
    join.add_argument("address", metavar="HOST:PORT", help="the head, as `restorer cluster head` printed it")
    _node_flags(join)
    join.set_defaults(run=run_join)

    stop = actions.add_parser("stop", help="stop the node started with this temp dir (by pid)")
    _temp_dir_flag(stop)
    stop.set_defaults(run=run_stop)


def _temp_dir_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--temp-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the node's private folder for sockets and logs (default: $STATE_DIRECTORY/ray under "
        "systemd, else /tmp/restorer-ray-UID)",
    )


def _node_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bind", metavar="IP", help="this machine's LAN address, the one other nodes reach it at"
    )
    parser.add_argument(
        "--num-cpus", type=int, metavar="N", help="CPUs actors may use here (0: no CPU actors; default all)"
    )
    parser.add_argument(
        "--num-gpus", type=int, metavar="N", help="GPUs actors may use here (default: the CUDA devices seen)"
    )
    parser.add_argument(
        "--resources",
        metavar="JSON",
        help="custom resources, e.g. '{\"photos\": 4}' (ray_resources pins actors to such nodes)",
    )
    _temp_dir_flag(parser)
    add_settings_flags(parser, ("ray_token_file",))


# -- token -----------------------------------------------------------------------------------------------


def run_token(args: argparse.Namespace) -> int:
    from daemon.ray_token import write_new_token

    try:
        write_new_token(args.file)
    except OSError as exc:
        log.error("cannot write a new token to %s: %s", args.file, exc.strerror or exc)
        return 2
    print(f"wrote a new Ray token to {args.file} (mode 0600); copy it to every machine of the cluster")
    return 0


# -- head and join ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodePlan:
    """Everything `ray start` is given; the token only as its file's path, in the environment."""

    arguments: list[str]
    env: dict[str, str]
    temp_dir: Path


def run_head(args: argparse.Namespace) -> int:
    role = ["--head", f"--port={args.port}", "--include-dashboard=false"]
    return _run_node(args, role)


def run_join(args: argparse.Namespace) -> int:
    host, _, port = args.address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        log.error("join needs the head's HOST:PORT, e.g. 192.168.1.10:%d (got %r)", HEAD_PORT, args.address)
        return 2
    return _run_node(args, [f"--address={args.address}"])


def _run_node(args: argparse.Namespace, role: list[str]) -> int:
    try:
        plan = _plan(args, role)
    except _Refused as exc:
        log.error("%s", exc)
        return 2
    running = _recorded_node(plan.temp_dir)
    if running is not None:
        log.error("a node started from %s is running (pid %d): stop it first", plan.temp_dir, running.leader)
        return 2
    return _supervise(plan)


class _Refused(Exception):
    pass


def _plan(args: argparse.Namespace, role: list[str]) -> NodePlan:
    from pydantic import ValidationError

    from daemon.ray_token import RayTokenError, check_ray_token, ray_auth_env
    from daemon.worker_pool import visible_cuda_devices

    try:
        token = check_ray_token(settings_from_args(args).ray_token_file)
        temp_dir = private_dir(args.temp_dir or default_temp_dir())
    except (RayTokenError, PrivateDirError, FileNotFoundError) as exc:
        raise _Refused(str(exc)) from None
    except ValidationError as exc:
        raise _Refused(f"invalid settings: {exc.errors()[0]['msg']}") from None
    num_gpus = args.num_gpus if args.num_gpus is not None else len(visible_cuda_devices(os.environ))
    arguments = [
        *role,
        f"--temp-dir={temp_dir}",
        *(f"{flag}={port}" for flag, port in NODE_PORTS.items()),
        f"--min-worker-port={WORKER_PORTS[0]}",
        f"--max-worker-port={WORKER_PORTS[1]}",
        f"--num-gpus={num_gpus}",
    ]
    if args.bind:
        arguments.append(f"--node-ip-address={args.bind}")
    if args.num_cpus is not None:
        arguments.append(f"--num-cpus={args.num_cpus}")
    if args.resources:
        arguments.append(f"--resources={args.resources}")
    env = {key: value for key, value in os.environ.items() if key != "RAY_AUTH_TOKEN"}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", **ray_auth_env(token)})
    return NodePlan(arguments, env, temp_dir)


def _die_with_parent() -> None:
    # Between fork and exec of `ray start`: killed with us, so no node outlives a `restorer cluster` -9.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _supervise(plan: NodePlan) -> int:
    """`ray start --block` in a session of its own; on SIGTERM/SIGINT, or when it ends, every process
    of that session is stopped by pid."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *plan.arguments]
    proc = subprocess.Popen(command, env=plan.env, start_new_session=True, preexec_fn=_die_with_parent)
    pid_file = plan.temp_dir / PID_FILE
    pid_file.write_text(json.dumps({"leader": proc.pid, "supervisor": os.getpid()}))
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("Ray node started (pid %d, temp dir %s): %s", proc.pid, plan.temp_dir, " ".join(plan.arguments))
    try:
        while proc.poll() is None and not stopping:
            time.sleep(0.5)
        code = proc.poll()
        stop_session(proc.pid, plan.temp_dir)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
    if stopping:
        log.info("Ray node stopped (signal %d)", stopping[0])
        return 0
    log.error("the Ray node exited with status %s (its log: %s/session_latest/logs)", code, plan.temp_dir)
    return 1 if not code else int(code)


# -- stop ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedNode:
    leader: int
    supervisor: int | None


def _recorded_node(temp_dir: Path) -> RecordedNode | None:
    """The node whose pid file is in temp_dir, if its `ray start` still runs (a reused pid is not ours:
    its command line must name the temp dir)."""
    try:
        record = json.loads((temp_dir / PID_FILE).read_text())
        leader = int(record["leader"])
        supervisor = record.get("supervisor")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:  # a reused pid is not ours: its command line must be our `ray start --temp-dir=DIR`
        cmdline = Path(f"/proc/{leader}/cmdline").read_bytes()
        zombie = _proc_stat(Path(f"/proc/{leader}"))[0] == "Z"
    except (OSError, IndexError):
        return None
    if zombie or f"--temp-dir={temp_dir}\0".encode() not in cmdline:
        return None
    return RecordedNode(leader, int(supervisor) if isinstance(supervisor, int) else None)


def run_stop(args: argparse.Namespace) -> int:
    temp_dir = (args.temp_dir or default_temp_dir()).absolute()
    node = _recorded_node(temp_dir)
    if node is None:
        print(f"no node started from {temp_dir} is running")
        return 1
    stopped = stop_session(node.leader, temp_dir)
    print(f"stopped the Ray node started from {temp_dir} ({len(stopped)} processes)")
    return 0


def stop_session(leader: int, temp_dir: Path) -> list[int]:
    """SIGTERM every process of the node (the session of its `ray start`, and any process naming its
    temp dir), then SIGKILL what is left after STOP_GRACE_SECONDS. By pid: nothing else is touched."""
    found = node_pids(leader, temp_dir)
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        for pid in node_pids(leader, temp_dir):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while node_pids(leader, temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
    return found


def node_pids(leader: int, temp_dir: Path) -> list[int]:
    return sorted((set(_pids_in_session(leader)) | set(pids_naming(temp_dir))) - {os.getpid()})


def _proc_stat(pid_dir: Path) -> list[str]:
    return (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()


def _live_pids() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _pids_in_session(session: int) -> list[int]:
    """Live (non-zombie) processes of the session `session` (Ray renames its processes, so the session
    finds its raylet, agents and workers; a session id is the pid of its leader)."""
    found = []
    for entry in _live_pids():
        with contextlib.suppress(OSError, IndexError):
            fields = _proc_stat(entry)  # state, ppid, pgrp, session, ...
            if fields[3] == str(session) and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def pids_naming(temp_dir: Path) -> list[int]:
    """This user's live processes whose command line names a path inside the temp dir (the GCS, the
    raylet, the agents: their sockets and logs are there). Not `restorer cluster head|join|stop` itself:
    those name the folder, not a path in it."""
    needles = (f"{temp_dir}/".encode(),)
    found = []
    for entry in _live_pids():
        with contextlib.suppress(OSError, IndexError):
            if entry.stat().st_uid != os.geteuid() or _proc_stat(entry)[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            if any(needle in cmdline for needle in needles):
                found.append(int(entry.name))
    return found
