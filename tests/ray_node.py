"""`ray start` for a test node that joins a cluster over loopback only.

With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 (Ray's Linux default) Ray rewrites 127.0.0.1 to the machine's LAN
address, which tests must not use; with 0 every Ray process stays on 127.0.0.1, but `ray start --address`
refuses to add a second node. This runs the same `ray start` with clusters enabled in this one process
and 127.0.0.1 taken literally; the processes it starts (raylet, agents, workers) inherit 0 from the
environment and stay on loopback too.
"""

from __future__ import annotations

import sys

from ray._private import ray_constants, services
from ray.scripts import scripts


def _keep_loopback(host: str) -> str:
    return host


ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = _keep_loopback

if __name__ == "__main__":
    sys.argv[0] = "ray"
    sys.exit(scripts.main())
