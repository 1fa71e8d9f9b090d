"""`edgepack run --cluster`: a real local Ray cluster, one head and two worker nodes on 127.0.0.1,

    head (driver, no target)     worker A: edgepack-target:x86-cpu     worker B: edgepack-target:x86-cpu-vnni

running the digits recipe (edgepack/examples/digits.recipe.toml, profiles shortened) with
--targets x86-cpu,x86-cpu-vnni. Checked: each target's steps ran on the node advertising it
(node id in the step manifest), the artifacts came back and equal a local run's, a re-run skips,
a target no device offers fails at once (named) while the others finish, a worker killed mid-task
is retried, a node lost mid-task is reported and the other target finishes, `fleet join` refuses
the (unauthenticated) cluster. The cluster (conftest.py) starts once for the session, shared with
test_fleet_hostile.py, and is always shut down.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[fleet]')")

from edgepack.errors import EdgepackError  # noqa: E402
from edgepack.fleet import resource  # noqa: E402
from edgepack.fleet.dispatch import run_on_fleet  # noqa: E402
from edgepack.recipe import load_recipe, run_recipe, sha256_path  # noqa: E402
from edgepack.resources import example_model  # noqa: E402

pytestmark = pytest.mark.slow  # a 3-node Ray cluster: ~1 min on 2 cores

TARGETS = ["x86-cpu", "x86-cpu-vnni"]
from tests.fleet.conftest import NODE  # noqa: E402  (the cluster fixture is shared: conftest.py)


def _recipe(tmp: Path, profile: str = "200ms") -> Path:
    """The bundled digits recipe, with the model path made absolute and shorter profiles."""
    text = (Path(example_model()).parent / "digits.recipe.toml").read_text()
    text = text.replace('model = "digits_cnn.onnx"', f'model = "{example_model()}"')
    text = text.replace('run = "profile"', f'run = "profile"\nduration = "{profile}"\nlayer-runs = 0')
    path = tmp / "digits.recipe.toml"
    path.write_text(text)
    return path


def _small_recipe(tmp: Path, profile: str = "200ms") -> Path:
    """optimize (once, here), then build and profile per target: for the failure cases."""
    path = tmp / "small.recipe.toml"
    path.write_text(f'''model = "{example_model()}"
[[step]]
run = "optimize"
[[step]]
run = "build"
[[step]]
run = "profile"
duration = "{profile}"
layer-runs = 0
''')
    return path


@pytest.fixture(scope="module")
def fleet_run(cluster, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    recipe = load_recipe(_recipe(tmp), targets=TARGETS)
    history = tmp / "history.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEPACK_HISTORY", str(history))
        results = run_on_fleet(recipe, tmp / "out", cluster[0].address)
    return recipe, tmp / "out", results, history


def test_each_target_runs_on_its_device_and_comes_back(cluster, fleet_run):
    _, nodes = cluster
    recipe, out, results, history = fleet_run
    assert {r.status for r in results} == {"done"}
    for target in TARGETS:
        for step in ("build-fp32", "build-int8", "profile-fp32", "profile-int8"):
            manifest = json.loads((out / target / f"{step}.step.json").read_text())
            assert manifest["device"]["node_id"] == nodes[target].node_id  # ran where the target is advertised
            for path, digest in manifest["outputs"].items():            # and came back intact
                assert Path(path).parent == out / target and sha256_path(path) == digest
        profile = json.loads((out / target / "profile-int8.json").read_text())
        assert profile["target"] == target and profile["model"]["path"] == str(out / target / "build-int8.onnx")
        assert "state" in profile["environment"]                          # device state recorded
    run = json.loads((out / "run.json").read_text())
    assert run["fleet"]["devices"]["x86-cpu"]["node_id"] == nodes["x86-cpu"].node_id
    # one history for the fleet: every device's profiles, with their hostname and device kind
    from edgepack.profile.history import History

    rows = History(history).runs(limit=100)
    # per target: profile-fp32, and profile-int8 --vs build-fp32 (both sides of the interleaved run)
    assert sorted(r["target"] for r in rows) == sorted(TARGETS * 3)
    assert all(r["hostname"] and r["device"] for r in rows)


def test_fleet_equals_a_local_run(fleet_run, tmp_path, monkeypatch):
    recipe, out, _, _ = fleet_run
    monkeypatch.setenv("EDGEPACK_HISTORY", str(tmp_path / "h.sqlite"))
    local = run_recipe(recipe, tmp_path / "local")
    assert {r.status for r in local} == {"done"}
    for target in TARGETS:
        for name in ("build-fp32.onnx", "build-int8.onnx"):
            assert sha256_path(out / target / name) == sha256_path(tmp_path / "local" / target / name)
        for name in ("profile-fp32.json", "profile-int8.json"):
            a, b = (json.loads((d / target / name).read_text()) for d in (out, tmp_path / "local"))
            assert (a["model"]["sha256"], a["target"], a["batch"]) == (b["model"]["sha256"], b["target"], b["batch"])


def test_rerun_skips_and_reruns_only_what_changed(cluster, fleet_run):
    recipe, out, _, history = fleet_run
    again = run_on_fleet(recipe, out, cluster[0].address)
    assert {r.status for r in again} == {"skipped"}
    (out / "x86-cpu-vnni" / "profile-int8.json").unlink()
    third = run_on_fleet(recipe, out, cluster[0].address)
    ran = [(r.id, r.target) for r in third if r.status == "done"]
    assert ran == [("profile-int8", "x86-cpu-vnni")]
    assert (out / "x86-cpu-vnni" / "profile-int8.json").is_file()


def test_target_without_device_fails_at_once_named(cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPACK_HISTORY", str(tmp_path / "h.sqlite"))
    recipe = load_recipe(_small_recipe(tmp_path), targets=["arm64-cpu"])
    with pytest.raises(EdgepackError, match=r"no device in the fleet offers arm64-cpu \(have: x86-cpu, x86-cpu-vnni\)"):
        run_on_fleet(recipe, tmp_path / "none", cluster[0].address)
    assert not (tmp_path / "none" / "optimize.onnx").exists()  # refused before any step ran
    recipe = load_recipe(_small_recipe(tmp_path), targets=["x86-cpu", "arm64-cpu"])
    with pytest.raises(EdgepackError, match="target arm64-cpu failed: no device in the fleet offers arm64-cpu"):
        run_on_fleet(recipe, tmp_path / "some", cluster[0].address)
    assert (tmp_path / "some" / "x86-cpu" / "profile.json").is_file()  # the other target finished


def _task_pid(node, timeout: float = 60.0) -> int:
    """The pid of the worker running our task on `node` (Ray titles it ray::_remote_entry)."""
    import psutil  # ray ships it

    raylet = node.all_processes["raylet"][0].process.pid
    end = time.time() + timeout
    while time.time() < end:
        for child in psutil.Process(raylet).children(recursive=True):
            try:
                if "ray::_remote_entry" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:
                continue
        time.sleep(0.1)
    raise AssertionError("the task never started")


def _run_in_thread(recipe, out, address):
    box = {}

    def work():
        try:
            box["results"] = run_on_fleet(recipe, out, address, grace_s=2.0)
        except EdgepackError as exc:
            box["error"] = exc
    thread = threading.Thread(target=work)
    thread.start()
    return thread, box


def test_worker_killed_mid_task_is_retried(cluster, tmp_path, monkeypatch):
    import psutil

    head, nodes = cluster
    monkeypatch.setenv("EDGEPACK_HISTORY", str(tmp_path / "h.sqlite"))
    recipe = load_recipe(_small_recipe(tmp_path, profile="1s"), targets=TARGETS)
    thread, box = _run_in_thread(recipe, tmp_path / "out", head.address)
    psutil.Process(_task_pid(nodes["x86-cpu-vnni"])).kill()
    thread.join(120)
    assert "error" not in box, box.get("error")
    assert {r.status for r in box["results"]} == {"done"}
    assert (tmp_path / "out" / "x86-cpu-vnni" / "profile.json").is_file()


def test_node_lost_mid_task_is_reported_and_the_other_target_finishes(cluster, tmp_path, monkeypatch):
    head, nodes = cluster
    monkeypatch.setenv("EDGEPACK_HISTORY", str(tmp_path / "h.sqlite"))
    recipe = load_recipe(_small_recipe(tmp_path, profile="1s"), targets=TARGETS)
    thread, box = _run_in_thread(recipe, tmp_path / "out", head.address)
    _task_pid(nodes["x86-cpu-vnni"])
    head.remove_node(nodes["x86-cpu-vnni"], allow_graceful=False)
    try:
        thread.join(120)
        assert not thread.is_alive()
        assert "target x86-cpu-vnni failed" in str(box.get("error")), box
        assert "x86-cpu " in str(box["error"]) or "targets x86-cpu finished" in str(box["error"])
        assert (tmp_path / "out" / "x86-cpu" / "profile.json").is_file()
    finally:
        nodes["x86-cpu-vnni"] = head.add_node(**NODE, node_ip_address="127.0.0.1",
                                              resources={resource("x86-cpu-vnni"): 1})


def test_fleet_status_lists_devices_targets_and_versions(cluster):
    from edgepack.fleet.status import fleet_status

    _, nodes = cluster
    status = fleet_status(cluster[0].address, timeout_s=60).to_json()
    assert status["schema"] == "edgepack.fleet.status/1"
    assert status["targets"] == {"x86-cpu": 1, "x86-cpu-vnni": 1}
    from edgepack.fleet.cluster import exclusive_targets

    assert exclusive_targets() == set()  # joined bare (no edgepack-device unit): tasks do not ask for it
    by_id = {n["node_id"]: n for n in status["nodes"]}
    for target, node in nodes.items():
        entry = by_id[node.node_id]
        assert entry["alive"] and entry["targets"] == [target]
        assert entry["device"]["versions"]["edgepack"] and len(entry["device"]["load_average"]) == 3


def test_join_checks_the_device_before_advertising(tmp_path):
    from edgepack.fleet.probe import device_facts, join, mismatches
    from edgepack.targets import load_target

    facts = device_facts()
    arm = dict(facts, machine="aarch64", cpu_flags=["asimd"])
    assert mismatches(load_target("arm64-cpu"), arm) == []
    assert "the target needs x86_64" in mismatches(load_target("x86-cpu"), arm)[0]
    no_vnni = dict(facts, machine="x86_64", cpu_flags=["avx2", "avx512f"])
    assert mismatches(load_target("x86-cpu-vnni"), no_vnni) == ["CPU lacks avx512_vnni (target cpu_isa avx512-vnni)"]
    assert "TensorRT is not installed" in mismatches(load_target("jetson-orin-nano"), dict(facts, versions={}))
    orin = dict(facts, versions={"tensorrt": "10.3.0"}, gpus=[{"name": "Orin", "compute_capability": "8.7"}])
    assert mismatches(load_target("jetson-orin-nano"), orin) == []
    assert "compute capability 8.7" in mismatches(load_target("jetson-xavier-nx"), orin)[-1]
    mine = [t for t in ("x86-cpu", "arm64-cpu") if not mismatches(load_target(t), facts)]
    result = join("10.0.0.5", mine, dry_run=True)  # a dry run contacts no head
    assert result.command[2:7] == ["edgepack.fleet.raystart", "start", "--address", "10.0.0.5:6379", "--resources"]
    assert json.loads(result.command[7]) == {"edgepack-device": 1, **{resource(t): 1 for t in mine}}
    assert "--node-ip-address" not in result.command  # only a loopback head keeps this node on 127.0.0.1
    assert "--node-ip-address" in join("127.0.0.1:6390", mine, dry_run=True).command
    assert not result.started
    other = "arm64-cpu" if mine == ["x86-cpu"] else "x86-cpu"
    with pytest.raises(EdgepackError, match=f"is not target '{other}'"):
        join("10.0.0.5", [other], dry_run=True)


def test_join_refuses_a_cluster_without_authentication(cluster, tmp_path):
    """The test cluster has no token authentication: a client without a token is answered, so
    `fleet join` refuses it unless --insecure (refused before `ray start` runs)."""
    from edgepack.fleet.auth import cluster_requires_token
    from edgepack.fleet.probe import join

    address = cluster[0].address
    assert cluster_requires_token(address) is False
    with pytest.raises(EdgepackError, match="accepts clients without a token.*refused.*--insecure"):
        join(address, ["x86-cpu"], force=True, token_file=tmp_path / "none")
