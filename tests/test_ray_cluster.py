"""The Ray test cluster itself: two real nodes on this machine, reachable by address, stopped by pid."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.ray_support import RayCluster

pytestmark = pytest.mark.ray

PROBE = """
import os, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
node_id = lambda: ray.get_runtime_context().get_node_id()
here = ray.get(ray.remote(num_cpus=0.1)(node_id).remote())
there = ray.get(ray.remote(num_cpus=0.1, resources={"node_b": 1})(node_id).remote())
print(len(ray.nodes()), here != there)
"""


def test_two_nodes_answer_by_address_and_custom_resources_pin_work(ray_cluster: RayCluster) -> None:
    # A separate driver process, as the daemon's Ray client is: nothing of Ray is loaded into pytest.
    result = subprocess.run(
        [sys.executable, "-c", PROBE, ray_cluster.address],
        env={**os.environ, **ray_cluster.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["2", "True"]
    assert ray_cluster.live_nodes() == 2
