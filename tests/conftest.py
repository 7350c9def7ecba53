"""Shared fixtures. The Ray cluster is started once per test session (a cluster costs ~20 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
