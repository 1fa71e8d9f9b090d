"""A hostile device in a real local Ray cluster (127.0.0.1) cannot write outside DIR/<target>/.

The shared cluster (conftest.py) gets one more worker node advertising x86-cpu-avx512 whose
Python workers start with a sitecustomize.py that replaces edgepack's device task
(`edgepack.fleet.remote.run_target`) by one that answers what `hostile.json` beside it says: a
real node record and, for each step sent, the files named there. The driver must refuse every
name that is not a plain file name the step declares, files over the size bound, a target folder
that is a symbolic link, and must replace (never follow) a link standing at a declared name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[fleet]')")

from edgepack.errors import EdgepackError  # noqa: E402
from edgepack.fleet import resource, untrusted  # noqa: E402
from edgepack.fleet.dispatch import run_on_fleet  # noqa: E402
from edgepack.recipe import load_recipe  # noqa: E402
from edgepack.resources import example_model  # noqa: E402
from tests.fleet.conftest import NODE  # noqa: E402

pytestmark = pytest.mark.slow  # shares the fleet cluster (~1 min to start on 2 cores)

TARGET = "x86-cpu-avx512"
SITE = '''
import json, os, pathlib
import edgepack.fleet.remote as remote

def hostile_run_target(job):
    order = json.loads(pathlib.Path(os.environ["EP_HOSTILE_DIR"], "hostile.json").read_text())
    steps = [{"id": step.id, "status": order.get("status", "done"), "seconds": 0.1, "note": "", "log": "",
              "files": {name: text.encode() for name, text in order["files"].items()}}
             for step, kind in job.steps if kind == "run"]
    return {"node": remote.node_record(), "steps": steps, "workdir": "/tmp/edgepack-hostile"}

remote.run_target = hostile_run_target
'''


@pytest.fixture(scope="module")
def hostile(cluster, tmp_path_factory):
    head, _ = cluster
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "sitecustomize.py").write_text(SITE)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    node = head.add_node(**NODE, node_ip_address="127.0.0.1", resources={resource(TARGET): 1},
                         env_vars={"PYTHONPATH": path, "EP_HOSTILE_DIR": str(folder)})
    head.wait_for_nodes()
    try:
        yield folder
    finally:
        head.remove_node(node)


def _recipe(tmp: Path) -> Path:
    path = tmp / "build.recipe.toml"
    path.write_text(f'model = "{example_model()}"\n[[step]]\nrun = "build"\n')
    return path


def _run(hostile: Path, tmp: Path, files: dict[str, str], out: Path | None = None):
    (hostile / "hostile.json").write_text(json.dumps({"files": files}))
    recipe = load_recipe(_recipe(tmp), targets=[TARGET])
    out = out or tmp / "run"
    with pytest.raises(EdgepackError) as caught:
        run_on_fleet(recipe, out, "unused")
    return str(caught.value), out


def _everything(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../../escaped.txt", "/tmp/ep-hostile-absolute.txt", "..", "sub/build.log",
                                  ".bashrc", "build.log\x00x", "evil.sh", "build.step.json", "x" * 300])
def test_a_hostile_name_writes_nothing(hostile, tmp_path, name):
    before = _everything(tmp_path)
    message, out = _run(hostile, tmp_path, {"build.log": "fine", name: "pwned"})
    assert f"target {TARGET} failed" in message and "reply was refused" in message, message
    assert not Path("/tmp/ep-hostile-absolute.txt").exists()
    written = {p for p in _everything(tmp_path) - before if (tmp_path / p).is_file()}
    assert written == {"build.recipe.toml", "run/run.json"}, written  # not even the legitimate build.log


def test_declared_names_come_back_and_a_missing_artifact_fails(hostile, tmp_path):
    message, out = _run(hostile, tmp_path, {"build.log": "a log"})
    assert (out / TARGET / "build.log").read_text() == "a log"
    assert "did not return build.onnx" in message, message
    assert not (out / TARGET / "build.step.json").exists()        # no manifest for what did not come


def test_files_over_the_size_bound_are_refused(hostile, tmp_path, monkeypatch):
    monkeypatch.setattr(untrusted, "MAX_FILE_BYTES", 16)
    message, out = _run(hostile, tmp_path, {"build.log": "x" * 17})
    assert "is 17 bytes (at most 16)" in message, message
    assert not (out / TARGET / "build.log").exists()


def test_no_symbolic_link_is_followed(hostile, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    (out / TARGET).symlink_to(outside, target_is_directory=True)  # the target folder is a link
    message, _ = _run(hostile, tmp_path, {"build.log": "pwned"}, out)
    assert "symbolic link is not followed" in message, message
    assert list(outside.iterdir()) == []
    (out / TARGET).unlink()
    (out / TARGET).mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep")
    (out / TARGET / "build.log").symlink_to(victim)                # a link at a declared name
    _run(hostile, tmp_path, {"build.log": "replaced"}, out)
    assert victim.read_text() == "keep"
    assert not (out / TARGET / "build.log").is_symlink()
    assert (out / TARGET / "build.log").read_text() == "replaced"
