"""The CLI as users meet it: help, one-line errors with exit codes, no tracebacks."""
from __future__ import annotations

import onnx

from tests.helpers import assert_one_line_error, edgepack_cli

TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,4] X) => (float[N,4] Y) { Y = Relu(X) }
"""


def test_help_lists_commands():
    result = edgepack_cli("--help")
    assert result.returncode == 0
    for command in ("inspect", "targets"):
        assert command in result.stdout


def test_missing_file():
    assert_one_line_error(edgepack_cli("inspect", "no/such/model.onnx"), "no/such/model.onnx", "not found")


def test_not_an_onnx_file(tmp_path):
    (tmp_path / "notes.onnx").write_text("just text\n")
    assert_one_line_error(edgepack_cli("inspect", tmp_path / "notes.onnx"), "notes.onnx")


def test_truncated_file(tmp_path):
    data = onnx.parser.parse_model(TINY).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[:-7])
    assert_one_line_error(edgepack_cli("inspect", tmp_path / "cut.onnx"), "cut.onnx")


def test_checker_failure(tmp_path):
    proto = onnx.parser.parse_model(TINY)
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, tmp_path / "bad.onnx")
    assert_one_line_error(edgepack_cli("inspect", tmp_path / "bad.onnx"), "bad.onnx", "checker", "hint:")


def test_unknown_option_is_a_usage_error(tmp_path):
    result = edgepack_cli("inspect", "m.onnx", "--frobnicate")
    assert result.returncode == 2 and "--frobnicate" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_target():
    assert_one_line_error(edgepack_cli("targets", "jetson-moon"), "jetson-moon", "x86-cpu")


def test_debug_shows_the_traceback():
    result = edgepack_cli("inspect", "missing.onnx", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
