"""The fleet tests' Ray cluster: one head and a worker node per target, all on 127.0.0.1,
started once for the session (test_fleet.py and test_fleet_hostile.py share it) and always shut down."""
from __future__ import annotations

import pytest

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20}
TARGETS = ["x86-cpu", "x86-cpu-vnni"]


@pytest.fixture(scope="session")
def cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[fleet]')")
    from ray.cluster_utils import Cluster

    from edgepack.fleet import resource
    from edgepack.fleet.cluster import keep_loopback

    keep_loopback()  # everything on 127.0.0.1
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**NODE, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    try:
        nodes = {t: cluster.add_node(**NODE, node_ip_address="127.0.0.1", resources={resource(t): 1})
                 for t in TARGETS}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
