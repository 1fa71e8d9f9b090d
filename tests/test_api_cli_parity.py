"""The Python API and the CLI are one: for each command, `edgepack.<command>(...)` with the CLI's
options writes the same files and returns the same JSON as `edgepack <command> ... --json`
(timing fields aside), and every option of every subcommand reaches a parameter of its function.

Each command runs twice, CLI then API, in two folders with the same relative output names, so
paths in the JSON match too.
"""
from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path

import pytest

import edgepack
from edgepack.cli import build_parser, main
from edgepack.cli.common import GENERAL, api_function
from edgepack.resources import data_dir, example_model

MODEL = str(example_model())
DATA = str(data_dir("calibration") / "digits")
TIMING = {"seconds", "build_seconds", "created", "id"}


def _strip(value):
    """The JSON without fields that measure time (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _cli(folder: Path, monkeypatch, capsys, *argv: str) -> tuple[int, dict | list]:
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    code = main([*argv, "--json", "report.json"])
    out = capsys.readouterr()
    assert (folder / "report.json").is_file(), out
    return code, json.loads((folder / "report.json").read_text())


def _api(folder: Path, monkeypatch, function, *args, **kwargs):
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    return function(*args, **kwargs)


# (name, CLI argv after the command, API function name, API args, API kwargs, files compared)
CASES = [
    ("inspect", ["inspect", MODEL], "inspect", (MODEL,), {}, []),
    ("optimize", ["optimize", MODEL, "-o", "out.onnx"], "optimize", (MODEL,), {"output": "out.onnx"},
     ["out.onnx"]),
    ("prune-channel", ["prune", MODEL, "-o", "out.onnx", "--sparsity", "0.5", "--granularity", "channel",
                       "--data", DATA, "-t", "jetson-orin-nano"],
     "prune", (MODEL, "out.onnx"), {"sparsity": 0.5, "granularity": "channel", "data": DATA,
                                   "target": "jetson-orin-nano"}, ["out.onnx"]),
    ("prune-2:4", ["prune", MODEL, "-o", "out.onnx", "--granularity", "2:4", "--exclude", "Gemm"],
     "prune", (MODEL, "out.onnx"), {"granularity": "2:4", "exclude": ["Gemm"]}, ["out.onnx"]),
    ("compress-clip", ["compress", "clip", MODEL, "-o", "out.onnx", "--percentile", "99"],
     "compress", (MODEL, "clip", "out.onnx"), {"percentile": 99.0}, ["out.onnx"]),
    ("compress-lowrank", ["compress", "lowrank", MODEL, "-o", "out.onnx", "--energy", "0.9"],
     "compress", (MODEL, "lowrank", "out.onnx"), {"energy": 0.9}, ["out.onnx"]),
    ("compress-fp16", ["compress", "fp16", MODEL, "-o", "out.onnx", "--keep-io-float"],
     "compress", (MODEL, "fp16", "out.onnx"), {"keep_io_float": True}, ["out.onnx"]),
    ("pack", ["pack", MODEL, "-o", "out.epk", "--codebook", "4"], "pack_model", (MODEL, "out.epk"),
     {"codebook": 4}, ["out.epk"]),
    ("calibrate", ["calibrate", MODEL, "--data", DATA, "-o", "ranges.json", "--method", "percentile",
                   "--limit", "64", "--symmetric", "--tensorrt-cache", "calib.cache", "-q"],
     "calibrate", (MODEL, DATA, "ranges.json"), {"method": "percentile", "limit": 64, "symmetric": True,
                                                "tensorrt_cache": "calib.cache", "progress": False},
     ["ranges.json", "calib.cache"]),
    ("check-qdq", ["check-qdq", MODEL, "-t", "jetson-orin-nano"], "check_qdq", (MODEL, "jetson-orin-nano"), {},
     []),
    ("build", ["build", MODEL, "-t", "x86-cpu", "-o", "built.onnx", "--threads", "1"], "build",
     (MODEL, "x86-cpu"), {"output": "built.onnx", "threads": 1}, ["built.onnx"]),
    ("targets", ["targets", "x86-cpu-vnni"], "describe_targets", ("x86-cpu-vnni",), {}, []),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_api_writes_the_same_files_and_json_as_the_cli(case, tmp_path, monkeypatch, capsys):
    _, argv, function, args, kwargs, files = case
    code, cli_json = _cli(tmp_path / "cli", monkeypatch, capsys, *argv)
    result = _api(tmp_path / "api", monkeypatch, getattr(edgepack, function), *args, **kwargs)
    assert code == result.exit_code == 0
    if function == "build":  # ONNX Runtime writes a different .ort file each time (same model)
        for document in (cli_json, api_json := result.to_json()):
            document["files"].pop("built.ort")
        assert _strip(api_json) == _strip(cli_json)
    else:
        assert _strip(result.to_json()) == _strip(cli_json)
    for name in files:
        cli_file, api_file = tmp_path / "cli" / name, tmp_path / "api" / name
        assert cli_file.is_file() and cli_file.read_bytes() == api_file.read_bytes(), name
    assert result.text()  # the CLI prints this


def test_unpack_and_check_qdq_failure_match(tmp_path, monkeypatch, capsys):
    from tests.helpers import save_text_model

    edgepack.pack_model(MODEL, tmp_path / "m.epk")
    code, cli_json = _cli(tmp_path / "cli", monkeypatch, capsys, "unpack", str(tmp_path / "m.epk"), "-o", "m.onnx")
    result = _api(tmp_path / "api", monkeypatch, edgepack.unpack_model, tmp_path / "m.epk", "m.onnx")
    assert _strip(result.to_json()) == _strip(cli_json) and code == 0
    assert (tmp_path / "cli/m.onnx").read_bytes() == (tmp_path / "api/m.onnx").read_bytes()

    # a uint8 QDQ model breaks TensorRT's rules: both say so, both exit 1
    qdq = save_text_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        q (float[1,4] X) => (float[1,4] Y) {
            s = Constant <value = float {0.1}> ()
            z = Constant <value = uint8 {128}> ()
            q = QuantizeLinear(X, s, z)
            Y = DequantizeLinear(q, s, z)
        }""", tmp_path / "q.onnx")
    code, cli_json = _cli(tmp_path / "cli", monkeypatch, capsys, "check-qdq", str(qdq), "-t", "jetson-orin-nano")
    result = edgepack.check_qdq(qdq, "jetson-orin-nano")
    assert code == result.exit_code == 1 and not result.ok
    assert result.to_json() == cli_json and cli_json["problems"]


def test_profile_check_and_history_match(tmp_path, monkeypatch, capsys):
    db = str(tmp_path / "history.sqlite")
    options = ["-t", "x86-cpu", "--runs", "30", "--warmup", "5", "--layer-runs", "2", "--history-db", db,
               "--no-progress"]
    code, cli_json = _cli(tmp_path / "cli", monkeypatch, capsys, "profile", MODEL, *options)
    result = _api(tmp_path / "api", monkeypatch, edgepack.profile_artifact, MODEL, "x86-cpu", runs=30, warmup=5,
                  layer_runs=2, history_db=db, progress=False)
    api_json = result.to_json()
    assert code == 0 and api_json.keys() == cli_json.keys()
    same = ("schema", "model", "target", "backend", "batch", "threads", "runs", "warmup")
    assert {k: api_json[k] for k in same} == {k: cli_json[k] for k in same}
    assert len(api_json["samples_ms"]) == len(cli_json["samples_ms"]) == 30
    assert [l["name"] for l in api_json["layers"]] and {l["name"] for l in api_json["layers"]} == {
        l["name"] for l in cli_json["layers"]}

    # check: the same two results give the same verdict and the same (seeded) interval (a confirming
    # rerun is a new timing, so it is off here: tests/profile/test_confirm.py covers it)
    (tmp_path / "api.json").write_text(json.dumps(api_json))
    (tmp_path / "cli.json").write_text(json.dumps(cli_json))
    code, cli_check = _cli(tmp_path / "cli", monkeypatch, capsys, "check", str(tmp_path / "api.json"),
                           "--baseline", str(tmp_path / "cli.json"), "--metric", "p50", "--threshold", "50%",
                           "--no-confirm")
    check = edgepack.check(tmp_path / "api.json", tmp_path / "cli.json", metric="p50", threshold="50%",
                           confirm=False)
    assert check.to_json() == cli_check and code == check.exit_code

    code, cli_history = _cli(tmp_path / "cli", monkeypatch, capsys, "history", "--history-db", db, "--model", MODEL)
    history = edgepack.history(model=MODEL, history_db=db)
    assert history.to_json() == cli_history and len(history.runs) == 2


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


PREPROCESSING = {f.name for f in __import__('dataclasses').fields(__import__('edgepack.calib.preprocess', fromlist=['Preprocess']).Preprocess)}


def test_every_option_of_every_command_is_a_parameter_of_its_function():
    """The CLI cannot offer what the API lacks: each parser dest is a parameter of the function
    (`--no-X` is `X`), except options that only shape the printed text (DISPLAY)."""
    checked = []
    for name, parser in _subparsers(build_parser()).items():
        module = importlib.import_module(f"edgepack.cli.{name.replace('-', '_')}")
        function = api_function(module.API)
        params = set(__import__("inspect").signature(function).parameters)
        parsers = [parser]
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):  # compress METHOD
            parsers = list(_subparsers(parser).values())
        for p in parsers:
            for action in p._actions:
                dest = action.dest
                if dest in GENERAL or dest in getattr(module, "DISPLAY", ()) or dest == "help" or \
                        isinstance(action, argparse._SubParsersAction) or dest.startswith("_"):
                    continue
                if dest in PREPROCESSING:  # one Preprocess, or carried by the data
                    assert "preprocess" in params or "data" in params, f"edgepack {name}: {dest} without data"
                    checked.append((name, dest))
                    continue
                assert dest in params or (dest.startswith("no_") and dest[3:] in params), \
                    f"edgepack {name}: option '{dest}' is not a parameter of {module.API}"
                checked.append((name, dest))
    assert len({n for n, _ in checked}) >= 14 and len(checked) > 60


def _keyword(option: str) -> str:
    """`--no-layers` -> `no_layers`, `--global` -> `global_` (a Python keyword)."""
    import keyword

    name = option.lstrip("-").replace("-", "_")
    return name + "_" if keyword.iskeyword(name) else name


def test_every_long_option_is_a_keyword_of_the_same_name():
    """The names users type are the names the API takes: every `--long-option` of every command
    (and of each `compress` method) is a parameter of its function under the same name,
    `--no-X` as `no_X` (and `X`), the preprocessing flags included."""
    checked = []
    for name, parser in _subparsers(build_parser()).items():
        module = importlib.import_module(f"edgepack.cli.{name.replace('-', '_')}")
        params = set(__import__("inspect").signature(api_function(module.API)).parameters)
        parsers = [parser]
        if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
            parsers = list(_subparsers(parser).values())
        for p in parsers:
            for action in p._actions:
                if action.dest in GENERAL or action.dest in getattr(module, "DISPLAY", ()) or \
                        action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                    continue
                for option in (o for o in action.option_strings if o.startswith("--")):
                    assert _keyword(option) in params, \
                        f"edgepack {name} {option}: {module.API} takes no keyword '{_keyword(option)}'"
                    checked.append((name, option))
    assert {"quantize", "compare", "build", "profile", "calibrate", "prune"} <= {n for n, _ in checked}
    assert ("compare", "--no-layers") in checked and ("quantize", "--scale") in checked


def test_cli_names_as_keywords_do_what_the_flags_do(tmp_path):
    """`scale=`, `mean=`, `layout=` are one Preprocess; `no_layers=True` is `layers=False`;
    `runtime=` is `runtime_name=`; a contradiction is refused."""
    from edgepack.calib.preprocess import Preprocess
    from edgepack.errors import UsageError

    data = str(data_dir("calibration") / "digits")
    by_names = edgepack.compare(MODEL, MODEL, data, no_layers=True, runtime="qdq-math", limit=8, scale=1)
    by_object = edgepack.compare(MODEL, MODEL, data, layers=False, runtime_name="qdq-math", limit=8,
                                 preprocess=Preprocess(scale=1))
    assert by_names.layers == [] and _strip(by_names.to_json()) == _strip(by_object.to_json())
    assert by_names.runtime["b"].startswith("ONNX Runtime, graph optimizations off")
    with pytest.raises(UsageError, match="contradicts"):
        edgepack.compare(MODEL, MODEL, data, no_layers=True, layers=True)
    ranges = edgepack.calibrate(MODEL, data, tmp_path / "r.json", limit=8, scale="1/255", mean=0.5,
                                progress=False).ranges
    assert ranges.preprocess == {"scale": 1 / 255, "mean": [0.5]}


def test_a_recipe_step_calls_the_same_function(tmp_path, monkeypatch):
    """`edgepack run` calls the command's function: a step's JSON and artifact are the API's."""
    from edgepack.recipe import load_recipe, run_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{MODEL}"\n\n[[step]]\nrun = "prune"\nsparsity = 0.5\ngranularity = "channel"\n')
    out = tmp_path / "out"
    (step,) = run_recipe(load_recipe(recipe), out)
    assert step.status == "done"
    result = edgepack.prune(MODEL, out / "api.onnx", sparsity=0.5, granularity="channel")
    recorded = json.loads((out / "prune.json").read_text())
    assert _strip({**result.to_json(), "output": None}) == _strip({**recorded, "output": None})
    assert (out / "prune.onnx").read_bytes() == (out / "api.onnx").read_bytes()


def test_a_failed_check_in_a_recipe_names_the_slowdown(tmp_path):
    """The recipe reads the check's typed result: its failure line is the verdict, not an exit code."""
    from edgepack.errors import EdgepackError
    from edgepack.recipe import load_recipe, run_recipe

    current = edgepack.profile_artifact(MODEL, "x86-cpu", runs=40, warmup=2, layer_runs=0, history=False,
                                        progress=False).to_json()
    # twice as fast, and of another model whose file is not here (the same artifact is never slower)
    baseline = {**current, "samples_ms": [t / 2 for t in current["samples_ms"]],
                "model": {**current["model"], "sha256": "b" * 64, "path": str(tmp_path / "gone.onnx")}}
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    (tmp_path / "current.json").write_text(json.dumps(current))
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{MODEL}"\ntargets = ["x86-cpu"]\n\n[[step]]\nrun = "check"\n'
                      f'input = "{tmp_path / "current.json"}"\nbaseline = "{tmp_path / "baseline.json"}"\n'
                      'metric = "p50"\nforce = true\n')
    with pytest.raises(EdgepackError) as failure:
        run_recipe(load_recipe(recipe), tmp_path / "out")
    assert "latency slower: current/baseline 2.000x at p50" in str(failure.value)
    assert "not confirmed: the baseline model file is not here" in str(failure.value)


def test_a_compress_step_names_its_method(tmp_path):
    """`compress` has sub-commands: a step picks one with `method = ...`, and gets the API's file."""
    from edgepack.errors import EdgepackError
    from edgepack.recipe import load_recipe, run_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{MODEL}"\n\n[[step]]\nrun = "compress"\nmethod = "fp16"\nkeep-io-float = true\n')
    (step,) = run_recipe(load_recipe(recipe), tmp_path / "out")
    assert step.status == "done" and step.argv[:2] == ["compress", "fp16"]
    edgepack.compress(MODEL, "fp16", tmp_path / "api.onnx", keep_io_float=True)
    assert (tmp_path / "out" / "compress.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()
    recipe.write_text(f'model = "{MODEL}"\n\n[[step]]\nrun = "compress"\npercentile = 99\n')
    with pytest.raises(EdgepackError, match="needs method = one of clip, lowrank, fp16"):
        load_recipe(recipe)
