"""What does running a recipe across a Ray fleet cost, against running it here target by target?

For 1, 2 and 4 local worker nodes (a Ray cluster on 127.0.0.1: a head with no target, workers
advertising the 4 targets round-robin, each one `edgepack-device` unit as `fleet join` gives: a
node runs one edgepack task at a time), the same recipe with 4 targets:
    optimize (once, here) -> per target: build -> profile (--duration D)
is run (a) sequentially here with `run_recipe`, (b) across the fleet with `run_on_fleet`, each in a
fresh output folder, alternating (a) and (b) per repeat. Printed: the median wall time of each,
their ratio, and Ray's overhead per task: the round trip of an empty task that needs a target
resource and takes 1 MB through the object store (median of 30), measured on the same cluster.
On one shared machine the workers compete for the same cores, so the fleet cannot be faster here
than the cores allow: the table measures overhead, not the speed-up of separate devices.

Usage:  python scripts/bench/bench_fleet.py [--nodes 1,2,4] [--repeats 2] [--duration 0.5]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgepack.resources import example_model  # noqa: E402

TARGETS = ["x86-cpu", "x86-cpu-vnni", "x86-cpu-avx512", "arm64-cpu"]
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}


def recipe_file(folder: Path, duration: float) -> Path:
    path = folder / "bench.recipe.toml"
    path.write_text(f'''model = "{example_model()}"
[[step]]
run = "optimize"
[[step]]
run = "build"
[[step]]
run = "profile"
duration = "{duration}s"
layer-runs = 0
no-history = true
''')
    return path


def _noop(payload):
    return len(payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--duration", type=float, default=0.5, help="profile duration per target (s)")
    args = parser.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from edgepack.fleet import DEVICE_RESOURCE, resource
    from edgepack.fleet.cluster import keep_loopback
    from edgepack.fleet.dispatch import run_on_fleet
    from edgepack.recipe import load_recipe, run_recipe

    keep_loopback()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        recipe = load_recipe(recipe_file(tmp, args.duration), targets=TARGETS)
        for count in [int(n) for n in args.nodes.split(",")]:
            start = time.perf_counter()
            cluster = Cluster(initialize_head=True, connect=False, head_node_args={**NODE, "include_dashboard": False})
            try:
                for i in range(count):
                    offered = {DEVICE_RESOURCE: 1, **{resource(t): 1 for j, t in enumerate(TARGETS) if j % count == i}}
                    cluster.add_node(**NODE, resources=offered)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
                started = time.perf_counter() - start
                local, fleet = [], []
                for r in range(args.repeats):
                    for mode in (("local", "fleet") if r % 2 == 0 else ("fleet", "local")):
                        out = tmp / f"{mode}-{count}-{r}"
                        t0 = time.perf_counter()
                        with contextlib.redirect_stderr(io.StringIO()):
                            if mode == "local":
                                run_recipe(recipe, out)
                            else:
                                run_on_fleet(recipe, out, cluster.address)
                        (local if mode == "local" else fleet).append(time.perf_counter() - t0)
                noop = ray.remote(_noop)
                payload = ray.put(b"\0" * 2**20)
                trips = []
                for i in range(30):
                    t0 = time.perf_counter()
                    ray.get(noop.options(resources={resource(TARGETS[i % len(TARGETS)]): 1}, num_cpus=0).remote(payload))
                    trips.append(time.perf_counter() - t0)
                rows.append((count, started, statistics.median(local), statistics.median(fleet),
                             statistics.median(trips[5:]) * 1000))
            finally:
                ray.shutdown()
                cluster.shutdown()
    load = os.getloadavg()[0]
    print(f"\nrecipe: optimize (here) -> build -> profile {args.duration:g} s, {len(TARGETS)} targets "
          f"({', '.join(TARGETS)}); median of {args.repeats} run(s) each; {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at the end")
    print(f"{'worker nodes':>12} {'cluster start s':>15} {'local sequential s':>18} {'fleet s':>8} "
          f"{'fleet/local':>11} {'Ray task round trip ms':>22}")
    for count, started, local, fleet, trip in rows:
        print(f"{count:>12} {started:>15.1f} {local:>18.2f} {fleet:>8.2f} {fleet / local:>11.2f} {trip:>22.1f}")
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split()
                    if f in ("avx512_vnni", "avx_vnni", "avx512f", "avx2")}) if Path("/proc/cpuinfo").exists() else []
    print(f"CPU flags: {' '.join(flags) or '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
