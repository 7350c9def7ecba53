"""The Ray cluster's token (issue 18, item 2): nothing runs on the cluster without it.

Fast checks first (no Ray): `restorer serve --executor ray` and `restorer cluster head|join` refuse to
start without a readable token; `restorer cluster token` makes one; the private temp dir. Then a real
token cluster across two network namespaces (tests/support/lan.py, lan_pair): the head, started with
`restorer cluster head`, in one; a "LAN host" in the other. Without the token that host can neither join
nor call the GCS; with it, `restorer cluster join` joins, and `restorer serve` (in the head's namespace)
restores a photo on an actor that runs on the LAN host, through a firewall in each namespace that opens
only the ports docs/deploy.md lists.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.ray_token import write_new_token
from tests.daemon_processors import fake_photo
from tests.ray_support import RAY, assert_token_out_of_sight, pids_naming
from tests.support.lan import LanPair, lan_pair
from tests.support.serve import ServeProcess
from tests.support.waiting import wait_for
from tests.support.workspace import jobs

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "app.cli"]
BASE_ENV = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
NO_RAY_AUTH = {key: value for key, value in BASE_ENV.items() if not key.startswith("RAY_AUTH")}


def cli(
    *argv: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *argv], env=env or BASE_ENV, capture_output=True, text=True, timeout=timeout, check=False
    )


# -- without Ray: refusals and the token file -------------------------------------------------------------


@pytest.mark.parametrize("problem", ["unset", "missing", "empty", "short", "a folder"])
def test_serve_with_executor_ray_refuses_to_start_without_a_readable_token(
    tmp_path: Path, problem: str
) -> None:
    token_file = tmp_path / "ray_token"
    if problem == "empty":
        token_file.write_text("\n")
    elif problem == "short":
        token_file.write_text("abc\n")
    elif problem == "a folder":
        token_file.mkdir()
    env = {**NO_RAY_AUTH, "RESTORER_STATE_DIR": str(tmp_path / "state")}
    if problem != "unset":
        env["RESTORER_RAY_TOKEN_FILE"] = str(token_file)
    result = subprocess.run(
        [*CLI, "serve", "--executor", "ray", "--ray-address", "127.0.0.1:1", "--bind", "127.0.0.1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "token" in result.stderr and "restorer cluster token FILE" in result.stderr, result.stderr
    assert "ready" not in result.stderr  # nothing started


def test_cluster_token_writes_a_new_private_token_and_never_overwrites_one(tmp_path: Path) -> None:
    token_file = tmp_path / "ray_token"
    result = cli("cluster", "token", str(token_file))
    assert result.returncode == 0, result.stderr
    text = token_file.read_text().strip()
    assert len(text) == 64 and int(text, 16) >= 0  # 32 random bytes, hex
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert text not in result.stdout + result.stderr  # the token itself is never printed
    again = cli("cluster", "token", str(token_file))
    assert again.returncode == 2 and "exists" in again.stderr
    assert token_file.read_text().strip() == text


@pytest.mark.parametrize("action", [["head"], ["join", "127.0.0.1:6379"]])
def test_cluster_nodes_refuse_to_start_without_a_token(tmp_path: Path, action: list[str]) -> None:
    temp_dir = tmp_path / "node"
    result = cli("cluster", *action, "--temp-dir", str(temp_dir), env=NO_RAY_AUTH)
    assert result.returncode == 2 and "token" in result.stderr, result.stderr
    (tmp_path / "empty").write_text("")
    result = cli("cluster", *action, "--ray-token-file", str(tmp_path / "empty"), env=NO_RAY_AUTH)
    assert result.returncode == 2 and "is empty" in result.stderr, result.stderr
    assert not pids_naming(temp_dir)  # no Ray process was started


@pytest.mark.parametrize("address", ["", "nas", "nas:", "nas:99999"])
def test_join_refuses_an_address_that_is_not_host_and_port(address: str) -> None:
    result = cli("cluster", "join", address)  # e.g. RAY_HEAD unset in the compose service
    assert result.returncode == 2 and "join needs the head's HOST:PORT" in result.stderr, result.stderr


def test_a_node_refuses_a_temp_dir_other_users_can_enter(tmp_path: Path) -> None:
    write_new_token(tmp_path / "ray_token")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    for temp_dir, why in ((shared, "other users could reach"), (link, "not a plain folder")):
        token = ["--ray-token-file", str(tmp_path / "ray_token")]
        result = cli("cluster", "head", "--temp-dir", str(temp_dir), *token, env=NO_RAY_AUTH)
        assert result.returncode == 2 and why in result.stderr, result.stderr
    assert not (tmp_path / "elsewhere").exists()


def test_a_node_gets_token_auth_the_documented_ports_and_one_gpu_per_visible_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import build_parser
    from app.commands import cluster

    write_new_token(tmp_path / "ray_token")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "an inherited token that must not win over the file")
    argv = ["cluster", "join", "10.0.0.1:6379", "--bind", "10.0.0.5", "--temp-dir", str(tmp_path / "node")]
    argv += ["--ray-token-file", str(tmp_path / "ray_token")]
    args = build_parser(argv).parse_args(argv)
    plan = cluster._plan(args, ["--address=10.0.0.1:6379"])
    assert plan.arguments[:2] == ["--address=10.0.0.1:6379", f"--temp-dir={tmp_path / 'node'}"]
    assert {"--num-gpus=2", "--node-ip-address=10.0.0.5", "--min-worker-port=10002"} <= set(plan.arguments)
    assert all(f"{flag}={port}" in plan.arguments for flag, port in cluster.NODE_PORTS.items())
    assert sorted(cluster.NODE_PORTS.values()) == [6380, 6381, 6382, 6383, 6384, 6385]  # docs/deploy.md
    assert plan.env["RAY_AUTH_MODE"] == "token"
    assert plan.env["RAY_AUTH_TOKEN_PATH"] == str((tmp_path / "ray_token").resolve())
    assert "RAY_AUTH_TOKEN" not in plan.env and plan.env["RAY_USAGE_STATS_ENABLED"] == "0"
    token = (tmp_path / "ray_token").read_text().strip()
    assert not any(token in text for text in [*plan.arguments, *plan.env.values()])
    assert stat.S_IMODE((tmp_path / "node").stat().st_mode) == 0o700


def test_cluster_stop_without_a_running_node_says_so(tmp_path: Path) -> None:
    result = cli("cluster", "stop", "--temp-dir", str(tmp_path))
    assert result.returncode == 1 and "no node started from" in result.stdout


# -- a real token cluster across two network namespaces ----------------------------------------------------


@dataclass
class TokenCluster:
    lan: LanPair
    token_file: Path
    root: Path  # short: Ray's socket paths must fit in 107 bytes
    head: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"{self.lan.first_address}:6379"

    def in_head(self, *argv: str) -> list[str]:
        return self.lan.command(self.lan.first, *argv)

    def in_lan_host(self, *argv: str) -> list[str]:
        return self.lan.command(self.lan.second, *argv)

    def live_nodes(self) -> int:
        """`ray status` from the head's namespace, with the token."""
        env = {**NO_RAY_AUTH, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}
        result = subprocess.run(
            self.in_head(str(RAY), "status", f"--address={self.address}"),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        active = result.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_"))


def _stop(proc: subprocess.Popen[bytes], temp_dir: Path) -> None:
    """SIGTERM to `restorer cluster head|join`: it stops its node by pid. Then nothing may be left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    for pid in pids_naming(temp_dir):  # only if stopping failed: never leave a node running
        os.kill(pid, signal.SIGKILL)


# What docs/deploy.md tells to open, and nothing else: each namespace drops every other incoming TCP
# connection, so the cluster below works through exactly these ports.
OPEN_ON_HEAD = "6379, 6380, 6381, 10002-10100"
OPEN_ON_NODE = "6380, 6381, 10002-10100"


def firewall(namespace: str, ports: str) -> None:
    """An nftables input policy in the namespace: loopback, replies and `ports` (TCP) only."""
    if shutil.which("nft") is None:
        pytest.skip("the port check needs nftables' `nft` (`make test` installs it)")
    rules = f"""
    table inet restorer_test {{
      chain input {{
        type filter hook input priority 0; policy drop;
        iif lo accept
        ct state established,related accept
        tcp dport {{ {ports} }} accept
      }}
    }}
    """
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=rules, text=True, check=True)


@pytest.fixture(scope="module")
def token_cluster() -> Iterator[TokenCluster]:
    with lan_pair() as lan:
        firewall(lan.first, OPEN_ON_HEAD)
        firewall(lan.second, OPEN_ON_NODE)
        root = Path(tempfile.mkdtemp(prefix="rk", dir="/tmp"))
        token_file = root / "ray_token"
        write_new_token(token_file)
        head_dir = root / "head"
        log = open(root / "head.log", "wb")  # noqa: SIM115 - closed below
        command = lan.command(
            lan.first,
            *CLI,
            "cluster",
            "head",
            "--bind",
            lan.first_address,
            "--num-cpus",
            "1",
            "--temp-dir",
            str(head_dir),
            "--ray-token-file",
            str(token_file),
        )
        head = subprocess.Popen(command, env=NO_RAY_AUTH, stdout=log, stderr=subprocess.STDOUT)
        cluster = TokenCluster(lan, token_file, root, head)
        try:
            wait_for(lambda: head.poll() is not None or cluster.live_nodes() == 1, timeout=120)
            assert head.poll() is None, (root / "head.log").read_text()[-3000:]
            yield cluster
        finally:
            _stop(head, head_dir)
            log.close()
            assert not pids_naming(head_dir), "Ray processes left after `restorer cluster head` stopped"
            subprocess.run(["rm", "-rf", str(root)], check=False)


def _from_lan_host(
    cluster: TokenCluster, env: dict[str, str], *argv: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cluster.in_lan_host(*argv), env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.mark.ray
def test_without_the_token_a_lan_host_can_neither_call_the_cluster_nor_join_it(
    token_cluster: TokenCluster,
) -> None:
    cluster = token_cluster
    wrong = cluster.root / "wrong_token"
    write_new_token(wrong)
    # A call to the GCS (what every node and driver makes first): without a token, or with another one.
    for extra in ({}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}):
        status = _from_lan_host(
            cluster, {**NO_RAY_AUTH, **extra}, str(RAY), "status", f"--address={cluster.address}"
        )
        assert status.returncode != 0 and "InvalidAuthToken" in status.stderr, status.stderr[-2000:]
    # Joining as a node (and so being handed actors and photos), with plain `ray start`, no token.
    rogue_dir = Path(tempfile.mkdtemp(prefix="rr", dir="/tmp"))
    try:
        joined = _from_lan_host(
            cluster,
            NO_RAY_AUTH,
            str(RAY),
            "start",
            f"--address={cluster.address}",
            f"--node-ip-address={cluster.lan.second_address}",
            "--num-cpus=1",
            f"--temp-dir={rogue_dir}",
        )
        assert joined.returncode != 0, joined.stdout[-2000:]
        assert "InvalidAuthToken" in joined.stderr, joined.stderr[-2000:]
        assert cluster.live_nodes() == 1  # still the head alone
    finally:
        for pid in pids_naming(rogue_dir):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(rogue_dir)], check=False)
    # The project's own command will not even try without one.
    refused = _from_lan_host(cluster, NO_RAY_AUTH, *CLI, "cluster", "join", cluster.address)
    assert refused.returncode == 2 and "token" in refused.stderr


@pytest.mark.ray
def test_a_daemon_with_another_token_stays_up_and_says_the_head_refused_its_token(
    token_cluster: TokenCluster, root: Path, serves: list[ServeProcess]
) -> None:
    wrong = root / "other_token"
    write_new_token(wrong)
    env = {"RAY_USAGE_STATS_ENABLED": "0", "RESTORER_RAY_TOKEN_FILE": str(wrong)}
    serve = ServeProcess(
        root, env, "--executor", "ray", "--ray-address", token_cluster.address,
        prefix=tuple(token_cluster.in_head()),
    )  # fmt: skip
    serves.append(serve)
    serve.wait_ready(timeout=120)  # the service runs (and keeps its queue) while the cluster refuses it
    wait_for(lambda: "refused the token in" in serve.output(), timeout=120)
    assert f"refused the token in {wrong} (InvalidAuthToken)" in serve.output()
    assert wrong.read_text().strip() not in serve.output()
    assert token_cluster.live_nodes() == 1
    assert serve.terminate() == 0


@pytest.mark.ray
def test_with_the_token_a_lan_host_joins_and_the_daemon_restores_on_it(
    token_cluster: TokenCluster, root: Path, serves: list[ServeProcess]
) -> None:
    cluster = token_cluster
    node_dir = cluster.root / "lan"
    node_log = open(cluster.root / "lan.log", "wb")  # noqa: SIM115 - closed below
    node = subprocess.Popen(
        cluster.in_lan_host(
            *CLI,
            "cluster",
            "join",
            cluster.address,
            "--bind",
            cluster.lan.second_address,
            "--num-cpus",
            "1",
            "--resources",
            '{"lan_host": 1}',
            "--temp-dir",
            str(node_dir),
        ),
        env={**NO_RAY_AUTH, "RESTORER_RAY_TOKEN_FILE": str(cluster.token_file)},
        stdout=node_log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: node.poll() is not None or cluster.live_nodes() == 2, timeout=120)
        assert node.poll() is None, (cluster.root / "lan.log").read_text()[-3000:]
        # The firewall holds: from the head's side the node's raylet answers, its runtime-env agent (which
        # listens on the node's address: it answers on the node itself) does not.
        assert _connects(cluster.in_head(), cluster.lan.second_address, 6380)
        assert _connects(cluster.in_lan_host(), cluster.lan.second_address, 6384)
        assert not _connects(cluster.in_head(), cluster.lan.second_address, 6384)
        # The daemon on the head's machine; its actor may run only on the LAN host (its resource).
        env = {
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",  # the daemon turns token auth on by itself
            "RESTORER_RAY_TOKEN_FILE": str(cluster.token_file),
            "RESTORER_RAY_ACTORS": "1",
            "RESTORER_RAY_NUM_CPUS": "0.5",
            "RESTORER_RAY_RESOURCES": '{"lan_host": 1}',
        }
        serve = ServeProcess(
            root,
            env,
            "--executor",
            "ray",
            "--ray-address",
            cluster.address,
            prefix=tuple(cluster.in_head()),
        )
        serves.append(serve)
        serve.wait_ready(timeout=120)
        (root / "inbox" / "photo.jpg").write_bytes(fake_photo(b"restored across the LAN"))
        wait_for(lambda: [j.state for j in jobs(root)] == ["done"], timeout=180)
        assert (root / "outbox" / "photo.bin").read_bytes() == fake_photo(b"restored across the LAN")
        actor_pid = jobs(root)[0].report["pid"]
        lan_namespace = os.stat(f"/run/netns/{cluster.lan.second}").st_ino
        assert os.stat(f"/proc/{actor_pid}/ns/net").st_ino == lan_namespace  # it ran on the LAN host
        assert_token_out_of_sight(cluster.token_file.read_text().strip(), serve.proc.pid, serve.output())
        assert serve.terminate() == 0
        # `restorer cluster stop` stops the node it started, by pid; the supervisor then exits.
        stopped = cli("cluster", "stop", "--temp-dir", str(node_dir))
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        node.wait(60)
        assert not pids_naming(node_dir)
        wait_for(lambda: cluster.live_nodes() == 1, timeout=120)
    finally:
        _stop(node, node_dir)
        node_log.close()


def _connects(namespace_prefix: list[str], host: str, port: int) -> bool:
    probe = f"import socket; socket.create_connection(({host!r}, {port}), timeout=3).close()"
    result = subprocess.run([*namespace_prefix, sys.executable, "-c", probe], capture_output=True, timeout=30)
    return result.returncode == 0
