"""`edgepack fleet status`: the devices of a fleet, their targets, versions and load.

Each alive node answers a small probe task pinned to it (edgepack and runtime versions, CPU,
GPU, load average); a node that does not answer within the timeout is listed from Ray's own
record only.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from edgepack.fleet import RESOURCE_PREFIX, require_ray

SCHEMA = "edgepack.fleet.status/1"


@dataclass
class NodeStatus:
    node_id: str
    hostname: str | None
    address: str | None
    alive: bool
    targets: list[str]
    cpus: float
    facts: dict | None = None  # the probe's answer; None: no answer (dead, busy, or no edgepack there)

    def to_json(self) -> dict:
        return {"node_id": self.node_id, "hostname": self.hostname, "address": self.address, "alive": self.alive,
                "targets": self.targets, "cpus": self.cpus, "device": self.facts}


@dataclass
class FleetStatus:
    cluster: str
    nodes: list[NodeStatus] = field(default_factory=list)

    @property
    def targets(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            if node.alive:
                for t in node.targets:
                    counts[t] = counts.get(t, 0) + 1
        return counts

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "cluster": self.cluster, "targets": self.targets,
                "nodes": [n.to_json() for n in self.nodes]}

    def format(self) -> str:
        lines = [f"{'node':<10} {'host':<20} {'address':<16} {'alive':<5} {'targets':<28} {'edgepack':<9} "
                 f"{'onnxruntime':<12} {'tensorrt':<9} {'load':>5}"]
        for n in self.nodes:
            facts = n.facts or {}
            v = facts.get("versions", {})
            load = facts.get("load_average")
            lines.append(f"{n.node_id[:8]:<10} {str(n.hostname)[:20]:<20} {str(n.address)[:16]:<16} "
                         f"{'yes' if n.alive else 'no':<5} {', '.join(n.targets) or '-':<28} "
                         f"{v.get('edgepack') or '?':<9} {v.get('onnxruntime') or '-':<12} "
                         f"{v.get('tensorrt') or '-':<9} {f'{load[0]:.2f}' if load else '?':>5}")
        offered = self.targets
        lines.append(f"{sum(n.alive for n in self.nodes)} alive node(s); targets offered: "
                     + (", ".join(f"{t} ({c})" for t, c in sorted(offered.items())) or "none"))
        return "\n".join(lines)


def _probe():
    from edgepack.fleet.probe import device_facts

    return device_facts()


def fleet_status(cluster: str, *, timeout_s: float = 30.0) -> FleetStatus:
    """Connect to the fleet at `cluster` and describe its nodes."""
    from edgepack.fleet.cluster import connect

    ray = require_ray()
    with connect(cluster):
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        status = FleetStatus(cluster)
        probe = ray.remote(_probe)
        refs = {}
        for node in ray.nodes():
            targets = sorted(k[len(RESOURCE_PREFIX):] for k in node.get("Resources", {}) if k.startswith(RESOURCE_PREFIX))
            entry = NodeStatus(node["NodeID"], node.get("NodeManagerHostname"), node.get("NodeManagerAddress"),
                               bool(node.get("Alive")), targets, float(node.get("Resources", {}).get("CPU", 0)))
            status.nodes.append(entry)
            if entry.alive:
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                refs[probe.options(num_cpus=0, scheduling_strategy=strategy).remote()] = entry
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        for ref in ready:
            try:
                refs[ref].facts = ray.get(ref)
            except ray.exceptions.RayError:
                pass
        for ref in set(refs) - set(ready):
            ray.cancel(ref, force=True)
        status.nodes.sort(key=lambda n: (not n.alive, n.hostname or "", n.node_id))
    return status
