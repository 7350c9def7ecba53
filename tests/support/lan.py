"""Peers of a LAN for the tests: a client in a network namespace of its own (`lan_client`: ip netns + a veth
pair, a private /30), or two such machines joined to each other (`lan_pair`). Never the machine's own
non-loopback address."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class LanAnswer:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


# Runs inside the namespace: one HTTP request, its answer as JSON on stdout.
_LAN_REQUEST = r"""
import json, sys, requests
spec = json.loads(sys.argv[1])
files = [(field, (name, bytes.fromhex(data), kind)) for field, name, data, kind in spec["files"]] or None
session = requests.Session()
session.trust_env = False  # no proxy from the environment: this is a LAN client
answer = session.request(spec["method"], spec["url"], headers=spec["headers"], files=files, timeout=20)
print(json.dumps({"status": answer.status_code, "headers": dict(answer.headers), "text": answer.text}))
"""


@dataclass(frozen=True)
class LanClient:
    """A client on a private /30 inside its own network namespace, joined to this host by a veth pair.

    The server binds `server_address` (this host's end); the client comes from `client_address`, a
    non-loopback peer, and talks to nothing but that /30.
    """

    namespace: str
    server_address: str
    client_address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespace, *argv]

    def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None = None,
        files: list[tuple[str, str, bytes, str]] | None = None,
    ) -> LanAnswer:
        spec = {
            "method": method,
            "url": url,
            "headers": headers or {},
            "files": [(field, name, data.hex(), kind) for field, name, data, kind in files or []],
        }
        result = subprocess.run(
            self.command(sys.executable, "-c", _LAN_REQUEST, json.dumps(spec)),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"the LAN client failed: {result.stderr}")
        return LanAnswer(**json.loads(result.stdout))

    def get(self, url: str, **kwargs: Any) -> LanAnswer:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> LanAnswer:
        return self.request("POST", url, **kwargs)


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@contextmanager
def lan_client() -> Iterator[LanClient]:
    """A network namespace with a veth pair and a private /30; removed afterwards, even on failure.

    Skips (does not fail) without root or without the `ip` tool, or where namespaces are not allowed.
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a LAN client needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 10000:04d}{secrets.randbelow(100):02d}"
    namespace, host_end, client_end = f"restorer-lan-{tag}", f"rlh{tag}", f"rlc{tag}"
    # A /30 in 10.200-249.x.x chosen from the tag: parallel test runs get different subnets.
    second, third = 200 + int(tag[:2]) % 50, (int(tag[2:]) * 4) % 256
    server, client = f"10.{second}.{third}.1", f"10.{second}.{third}.2"
    try:
        try:
            _ip("netns", "add", namespace)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"network namespaces are not allowed here: {exc.stderr.decode().strip()}")
        _ip("link", "add", host_end, "type", "veth", "peer", "name", client_end)
        _ip("link", "set", client_end, "netns", namespace)
        _ip("addr", "add", f"{server}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{client}/30", "dev", client_end)
        _ip("netns", "exec", namespace, "ip", "link", "set", client_end, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield LanClient(namespace=namespace, server_address=server, client_address=client)
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=30, check=False)
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False)


@dataclass(frozen=True)
class LanPair:
    """Two machines of a LAN, each a network namespace of its own, joined by a veth pair on a private /30:
    `first` at `first_address`, `second` at `second_address`. Neither reaches anything else (not even
    this host's addresses); each has its own loopback and its own port space."""

    first: str
    second: str
    first_address: str
    second_address: str

    @staticmethod
    def command(namespace: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]


@contextmanager
def lan_pair() -> Iterator[LanPair]:
    """Two network namespaces and the veth pair between them; removed afterwards, even on failure.
    Skips like lan_client where namespaces cannot be made."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("a LAN pair needs root and iproute2 (ip netns, veth)")
    tag = f"{os.getpid() % 10000:04d}{secrets.randbelow(100):02d}"
    first, second = f"restorer-a-{tag}", f"restorer-b-{tag}"
    # 10.250-254.x.x: apart from lan_client's 10.200-249.x.x.
    second_octet, third = 250 + int(tag[:2]) % 5, (int(tag[2:]) * 4) % 256
    first_address, second_address = f"10.{second_octet}.{third}.1", f"10.{second_octet}.{third}.2"
    end_a, end_b = f"rpa{tag}", f"rpb{tag}"
    made: list[str] = []
    try:
        for namespace in (first, second):
            try:
                _ip("netns", "add", namespace)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"network namespaces are not allowed here: {exc.stderr.decode().strip()}")
            made.append(namespace)
        _ip("link", "add", end_a, "type", "veth", "peer", "name", end_b)
        for namespace, end, address in ((first, end_a, first_address), (second, end_b, second_address)):
            _ip("link", "set", end, "netns", namespace)
            _ip("-n", namespace, "addr", "add", f"{address}/30", "dev", end)
            _ip("-n", namespace, "link", "set", end, "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
        yield LanPair(first, second, first_address, second_address)
    finally:
        subprocess.run(["ip", "link", "del", end_a], capture_output=True, timeout=30, check=False)
        for namespace in made:  # deleting a namespace deletes the veth end inside it, and so its peer
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30, check=False)
