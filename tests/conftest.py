"""Shared fixtures: daemon folders, `restorer serve` processes stopped after each test, and the Ray
cluster. The Ray cluster is started once per test session (a cluster costs ~20 s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_support import ServeProcess
from tests.ray_support import RayCluster


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A head (2 CPUs) and a second node carrying the custom resource `node_b`, on 127.0.0.1."""
    cluster = RayCluster()
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=2, resources='{"node_b": 100}')
        yield cluster
    finally:
        root = cluster.root
        cluster.stop()
        strays = cluster.pids()
        assert not strays, f"Ray processes left running after the cluster stopped: {strays} ({root})"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The daemon's folders (inbox, outbox, failed, archive, state) under the test's tmp dir."""
    for name in ("inbox", "outbox", "failed", "archive", "state"):
        (tmp_path / name).mkdir()
    yield tmp_path


@pytest.fixture
def serves() -> Iterator[list[ServeProcess]]:
    """Append each ServeProcess a test starts; all are stopped when the test ends."""
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        serve.cleanup()
