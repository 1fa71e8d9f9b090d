"""Recipes resolve names the way users write them: a step id wherever a file is accepted (`vs`,
`baseline`, `input`), paths relative to the recipe, target files beside it, and an output folder
inside a hashed input folder left out of that input's hash (with one line saying so)."""
from __future__ import annotations

import json
import logging
import shutil

from edgepack.recipe import load_recipe, run_recipe
from edgepack.resources import data_dir, example_model

PROFILE = 'runs = 20\nwarmup = 2\nlayer-runs = 0\nno-history = true\n'


def test_step_ids_where_files_go_and_paths_relative_to_the_recipe(tmp_path, monkeypatch):
    # model ─► build-fp32 ─► profile-fp32 ─┐
    #   └────► build-again ─► profile --vs build-fp32 ─► check --baseline profile-fp32
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(example_model(), folder / "net.onnx")
    shutil.copy(data_dir("targets") / "x86-cpu.toml", folder / "mytarget.toml")
    (folder / "r.toml").write_text(
        'model = "net.onnx"\ntargets = ["mytarget.toml"]\n'
        '[[step]]\nid = "build-fp32"\nrun = "build"\n'
        f'[[step]]\nid = "profile-fp32"\nrun = "profile"\n{PROFILE}'
        '[[step]]\nid = "build-again"\nrun = "build"\ninput = "model"\nno-runtime-check = true\n'
        f'[[step]]\nid = "ab"\nrun = "profile"\nvs = "build-fp32"\n{PROFILE}'
        '[[step]]\nrun = "check"\ninput = "ab"\nbaseline = "profile-fp32"\nthreshold = "500%"\nforce = true\n'
        'no-confirm = true\n')
    monkeypatch.chdir(tmp_path)  # not the recipe's folder: every name resolves against the recipe
    out = tmp_path / "out"
    results = run_recipe(load_recipe(folder / "r.toml"), out)
    assert [r.status for r in results] == ["done"] * 5
    ab = json.loads((out / "mytarget" / "ab.step.json").read_text())
    assert ab["options"]["vs"] == str(out / "mytarget" / "build-fp32.onnx")
    check = json.loads((out / "mytarget" / "check.step.json").read_text())
    assert check["options"]["baseline"] == str(out / "mytarget" / "profile-fp32.json")
    assert json.loads((out / "mytarget" / "ab.json").read_text())["vs"]["model"]["name"] == "build-fp32.onnx"


def test_an_output_folder_inside_the_data_folder_is_left_out_of_its_hash(tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(data_dir("calibration") / "digits", data)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{example_model()}"\ndata = "data"\n'
                      '[[step]]\nrun = "calibrate"\nlimit = 16\n')
    out = data / "runs"  # inside the data folder the step hashes
    with caplog.at_level(logging.WARNING, logger="edgepack.recipe"):
        first = run_recipe(load_recipe(recipe), out)
        again = run_recipe(load_recipe(recipe), out)
    assert [r.status for r in first] == ["done"] and [r.status for r in again] == ["skipped"]
    said = [r.getMessage() for r in caplog.records if "left out of that input's hash" in r.getMessage()]
    assert len(said) == 1 and str(out) in said[0]
