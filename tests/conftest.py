"""Shared fixtures: daemon folders, `restorer serve` processes stopped after each test, and the Ray
cluster. The Ray cluster is started once per test session (a cluster costs ~20 s)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ray_support import RayCluster
from tests.support.serve import ServeProcess
from tests.support.settings import make_folders


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A head (2 CPUs) and a second node carrying the custom resource `node_b`, on 127.0.0.1."""
    cluster = RayCluster()
    try:
        cluster.start_head(num_cpus=2)
        cluster.add_node(num_cpus=2, resources='{"node_b": 100}')
        yield cluster
    finally:
        stop_and_check(cluster)


@pytest.fixture
def own_cluster(serves: list[ServeProcess]) -> Iterator[RayCluster]:
    """A Ray cluster of this test's own (nothing started yet), which it may kill and restart. The daemons
    the test started are stopped before the cluster is."""
    cluster = RayCluster()
    try:
        yield cluster
    finally:
        for serve in serves:
            serve.cleanup()
        stop_and_check(cluster)


def stop_and_check(cluster: RayCluster) -> None:
    """Stop every process of the cluster; none may be left running."""
    root = cluster.root
    cluster.stop()
    strays = cluster.pids()
    assert not strays, f"Ray processes left running after the cluster stopped: {strays} ({root})"


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """The daemon's folders (inbox, outbox, failed, archive, state) under the test's tmp dir."""
    make_folders(tmp_path)
    yield tmp_path


@pytest.fixture
def serves() -> Iterator[list[ServeProcess]]:
    """Append each ServeProcess a test starts; all are stopped when the test ends."""
    started: list[ServeProcess] = []
    yield started
    for serve in started:
        serve.cleanup()
