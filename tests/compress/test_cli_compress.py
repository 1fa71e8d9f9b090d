"""The prune and compress commands as a user runs them: outputs, JSON reports, one-line errors."""
import json

import numpy as np

from edgepack import io
from edgepack.graph import const_array, weight_input
from tests.compress.test_prune import resnet
from tests.helpers import assert_one_line_error, check, edgepack_cli, run_ort

EXAMPLE = "edgepack/examples/digits_cnn.onnx"
DIGITS = "calibration/digits"


def test_prune_2_4_cli_with_data(tmp_path):
    out, report_path = tmp_path / "p.onnx", tmp_path / "p.json"
    result = edgepack_cli("prune", EXAMPLE, "-o", out, "--sparsity", "0.5", "--granularity", "2:4",
                          "--data", DIGITS, "--json", report_path)
    assert result.returncode == 0, result.stderr
    assert "output error" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["schema"] == "edgepack.prune/1"
    assert report["error"]["samples"] > 0 and "accuracy" in report["error"]
    assert report["after"]["nonzeros"] < report["before"]["nonzeros"]
    model = io.load(out)
    for node in model.graph:
        if node.op_type in ("Conv", "Gemm") and weight_input(node) is not None:
            w = const_array(weight_input(node))
            axis = 1 if node.op_type == "Conv" or node.attributes.get("transB") else 0
            if w.shape[axis] % 4 == 0:
                g = np.moveaxis(w, axis, -1)
                assert (np.count_nonzero(g.reshape(*g.shape[:-1], -1, 4), axis=-1) <= 2).all()


def test_prune_channel_cli_residual(tmp_path):
    src = io.save(resnet(np.random.default_rng(0)), tmp_path / "res.onnx")
    out = tmp_path / "c.onnx"
    result = edgepack_cli("prune", src, "-o", out, "--sparsity", "0.5", "--granularity", "channel",
                          "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["after"]["macs"] < 0.6 * report["before"]["macs"]
    model = io.load(out)
    check(model)
    run_ort(model, {"x": np.zeros((1, 3, 8, 8), np.float32)})


def test_compress_methods_cli(tmp_path):
    for args in (["clip", "--percentile", "99.9"], ["lowrank", "--energy", "0.9", "--min-saving", "0"],
                 ["fp16", "--keep-io-float"]):
        out = tmp_path / f"{args[0]}.onnx"
        result = edgepack_cli("compress", args[0], EXAMPLE, "-o", out, *args[1:], "--data", DIGITS,
                              "--json", tmp_path / "r.json")
        assert result.returncode == 0, (args, result.stderr)
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["schema"] == "edgepack.compress/1" and report["method"] == args[0]
        assert report["error"]["max_abs_error"] >= 0 and report["after"]["size_bytes"] > 0
        check(io.load(out))
    assert report["after"]["size_bytes"] < 0.6 * report["before"]["size_bytes"]  # fp16


def test_user_mistakes_are_one_line(tmp_path):
    assert_one_line_error(edgepack_cli("prune", EXAMPLE, "-o", tmp_path / "x.onnx", "--sparsity", "2"),
                          "--sparsity")
    assert_one_line_error(edgepack_cli("prune", EXAMPLE, "-o", tmp_path / "x.onnx", "--sparsity", "0.5",
                                       "--exclude", "nosuchnode"), "nosuchnode")
    assert_one_line_error(edgepack_cli("compress", "lowrank", EXAMPLE, "-o", tmp_path / "x.onnx",
                                       "--rank", "abc"), "--rank", code=2)
    assert_one_line_error(edgepack_cli("prune", EXAMPLE, "-o", tmp_path / "x.onnx", "--sparsity", "0.5",
                                       "--bias-correction"), "--data", code=2)
    assert not (tmp_path / "x.onnx").exists()


def test_fp16_data_rule_from_the_cli(tmp_path, capsys):
    from edgepack.cli import main

    out = tmp_path / "h.onnx"
    assert main(["compress", "fp16", EXAMPLE, "-o", str(out), "--data", DIGITS, "--data-max", "11",
                 "--json", str(tmp_path / "r.json")]) == 0  # in-process: the CLI path, without a new interpreter
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["data_rule"] and report["data_max"] == 11
    reasons = [k["reason"] for k in report["kept_float32"]]
    assert reasons and all("on the data (> 11)" in r for r in reasons)
    assert len(report["float32_nodes"]) == len(reasons) and report["converted_nodes"] > 0
    check(io.load(out))
    assert main(["compress", "fp16", EXAMPLE, "-o", str(tmp_path / "x.onnx"), "--data-max", "0"]) == 2
    assert "error: --data-max 0" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
