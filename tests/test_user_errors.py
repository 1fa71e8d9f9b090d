"""Every user mistake of issue #12 gets one `error:` line (exit 1, or 2 for usage), never an
internal error or a traceback. Each case is a crafted file, run in-process through the CLI.

    tiny model:  x [N|1, 3, 8, 8] -> Conv(8) -> BN -> Relu -> GAP -> Flatten -> Gemm(4) -> y
"""
from __future__ import annotations

import contextlib
import hashlib
import io as stdio
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import io
from edgepack.cli import main
from tests.passes.nets import NetBuilder


def run_cli(*argv) -> tuple[int, str]:
    err = stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdio.StringIO()):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return code, err.getvalue()


def assert_clean_error(code: int, err: str, *needles: str, exit_code: int = 1) -> None:
    assert code == exit_code, (code, err)
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert len(err.strip().splitlines()) == 1, f"other lines on stderr: {err}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tiny_model(path: Path, batch="N") -> Path:
    b = NetBuilder(0)
    y = b.conv_bn("x", 3, 8, 3)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    io.save(b.model([batch, 3, 8, 8], b.gemm(y, 8, 4), [batch, 4]), path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("mistakes")
    tiny_model(root / "m.onnx")
    tiny_model(root / "fixed.onnx", batch=1)
    np.savez(root / "good.npz", x=np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32))
    return root


# ---------------------------------------------------------------- calibration data

def _npz_with_header(path: Path, shape) -> Path:
    buf = stdio.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buf.write(b"\0" * (3 * 8 * 8 * 4 * 2))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", buf.getvalue())
    return path


def _folder(root: Path, name: str, manifest: str, images: dict | None = None) -> Path:
    from PIL import Image

    path = root / name
    (path / "img").mkdir(parents=True, exist_ok=True)
    (path / "manifest.toml").write_text(manifest)
    for file, size in (images or {}).items():
        Image.new("RGB", size, (100, 50, 25)).save(path / "img" / file)
    return path


def _bad_crc(root: Path) -> Path:
    raw = bytearray((root / "good.npz").read_bytes())
    raw[raw.find(b"\x93NUMPY") + 300] ^= 0xFF
    (root / "badcrc.npz").write_bytes(bytes(raw))
    return root / "badcrc.npz"


DATA_CASES = {
    "bad-crc": (_bad_crc, "corrupt"),
    "truncated-npy": (lambda r: (np.save(r / "t.npy", np.zeros((5, 3, 8, 8), np.float32)),
                                 (r / "t.npy").write_bytes((r / "t.npy").read_bytes()[:300]), r / "t.npy")[-1],
                      "t.npy"),
    "text-npy": (lambda r: ((r / "text.npy").write_text("hello\n"), r / "text.npy")[-1], "text.npy"),
    "manifest-missing-file": (lambda r: _folder(r, "missing", '[files]\ncalibration = "nope.npz"\n'), "nope.npz"),
    "images-not-a-table": (lambda r: _folder(r, "images5", "images = 5\n"), "images"),
    "images-of-different-sizes": (lambda r: _folder(r, "sizes", '[images]\nfolder = "img"\n',
                                                    {"a.png": (8, 8), "b.png": (10, 12)}), "different sizes"),
    "huge-crop": (lambda r: _folder(r, "crop", '[images]\nfolder = "img"\ncrop = 1000000000\n',
                                    {"a.png": (8, 8)}), "crop"),
    "values-1e38": (lambda r: (np.savez(r / "big.npz", x=np.full((2, 3, 8, 8), 1e38, np.float32)),
                               r / "big.npz")[-1], "NaN or Inf"),
    "header-claims-1e9-samples": (lambda r: _npz_with_header(r / "huge.npz", (10**9, 3, 8, 8)), "1000000000"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_calibration_data(folder, tmp_path, case):
    make, needle = DATA_CASES[case]
    data = make(folder)
    code, err = run_cli("calibrate", folder / "m.onnx", "--data", data, "-o", tmp_path / "r.json")
    assert_clean_error(code, err, needle)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("command", ["calibrate", "quantize", "compare"])
def test_fixed_batch_model_with_multi_sample_data_is_no_internal_error(folder, tmp_path, command):
    """A model exported with batch 1 given 5 samples at once: either it runs (samples fed one at a
    time) or it says so in one line."""
    argv = {"calibrate": ["calibrate", folder / "fixed.onnx", "--data", folder / "good.npz", "-o", tmp_path / "r"],
            "quantize": ["quantize", folder / "fixed.onnx", "-t", "x86-cpu", "--data", folder / "good.npz",
                         "-o", tmp_path / "q.onnx"],
            "compare": ["compare", folder / "fixed.onnx", folder / "fixed.onnx", "--data", folder / "good.npz"]}
    code, err = run_cli(*argv[command])
    if code != 0:
        assert_clean_error(code, err)


# ---------------------------------------------------------------- models

def _external_model(path: Path, location: str, offset: int = 0, length: int = 64) -> Path:
    (path.parent / "w.bin").write_bytes(np.ones(16, np.float32).tobytes())
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                       ir_version=8).SerializeToString())
    return path


def _relu_bytes(name: bytes = b"NODEZZ") -> bytes:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="NODEZZ")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    raw = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    return raw.replace(b"NODEZZ", name)


MODEL_CASES = {
    "location-with-nul": (lambda p: _external_model(p, "w.bin\x00../../etc/passwd"), "NUL"),
    "location-over-long": (lambda p: _external_model(p, "a" * 5000), "5000 characters"),
    "offset-past-the-end": (lambda p: _external_model(p, "w.bin", offset=10**6), "w.bin"),
    "length-past-the-end": (lambda p: _external_model(p, "w.bin", length=10**9), "w.bin"),
    "invalid-utf8-node-name": (lambda p: (p.write_bytes(_relu_bytes(b"NO\xff\xfeZZ")), p)[-1], "UTF-8"),
}


@pytest.mark.parametrize("command", ["inspect", "optimize", "prune"])
@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_malformed_model(tmp_path, case, command):
    make, needle = MODEL_CASES[case]
    model = make(tmp_path / "bad.onnx")
    out = tmp_path / "out.onnx"
    argv = {"inspect": ["inspect", model], "optimize": ["optimize", model, "-o", out],
            "prune": ["prune", model, "-o", out, "--sparsity", "0.5"]}[command]
    code, err = run_cli(*argv)
    assert_clean_error(code, err, needle)
    assert not out.exists()


@pytest.mark.parametrize("argv", [["prune", "--sparsity", "0.5"], ["compress", "clip", "--percentile", "99"],
                                  ["compress", "lowrank", "--rank", "2"], ["compress", "fp16"]])
def test_model_without_inputs(tmp_path, argv):
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(np.ones((4, 4), np.float32), "a"),
                               numpy_helper.from_array(np.full((4, 4), 0.5, np.float32), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              tmp_path / "noin.onnx")
    command = argv[:2] if argv[0] == "compress" else argv[:1]
    options = argv[len(command):]
    code, err = run_cli(*command, tmp_path / "noin.onnx", "-o", tmp_path / "o.onnx", *options)
    assert_clean_error(code, err, "no inputs")
    assert not (tmp_path / "o.onnx").exists()


# ---------------------------------------------------------------- packages

def _epk(path: Path, header, payload: bytes) -> Path:
    from edgepack.pack import format as fmt

    if isinstance(header, dict):
        header = {**header, "payload_bytes": len(payload), "payload_sha256": hashlib.sha256(payload).hexdigest()}
    text = json.dumps(header).encode()
    path.write_bytes(fmt._PREFIX.pack(fmt.MAGIC, fmt.VERSION, len(text)) + text + payload)
    return path


def _with_streams(path: Path, header: dict, streams: dict[str, bytes], **changes) -> Path:
    entries, payload = [], b""
    for entry in header["streams"]:
        data = zlib.compress(streams[entry["name"]])
        entries.append({**entry, "codec": "zlib", "offset": len(payload), "length": len(data)})
        payload += data
    return _epk(path, {**header, "streams": entries, **changes}, payload)


@pytest.fixture(scope="module")
def package(folder):
    from edgepack.pack import format as fmt

    code, err = run_cli("pack", folder / "m.onnx", "-o", folder / "m.epk")
    assert code == 0, err
    header, payload = fmt.read_header(folder / "m.epk")
    streams = {e["name"]: fmt._decompress(e["codec"], payload[e["offset"]:e["offset"] + e["length"]],
                                          e["raw_length"], "")
               for e in header["streams"]}
    return header, payload, streams


def _failing_checker() -> bytes:
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


EPK_CASES = {
    "missing-key": lambda p, h, pl, s: _epk(p, {**h, "streams": [{k: v for k, v in e.items() if k != "codec"}
                                                                for e in h["streams"]]}, pl),
    "wrong-type": lambda p, h, pl, s: _epk(p, {**h, "streams": [{**e, "offset": "x"} for e in h["streams"]]}, pl),
    "streams-not-a-list": lambda p, h, pl, s: _epk(p, {**h, "streams": 5}, pl),
    "header-not-a-table": lambda p, h, pl, s: _epk(p, [1, 2], pl),
    "graph-not-protobuf": lambda p, h, pl, s: _with_streams(p, h, {**s, "graph": b"\xff\xff\xff garbage"}),
    "position-out-of-range": lambda p, h, pl, s: _with_streams(
        p, h, {**s, "table": json.dumps([{**e, "position": 999} for e in json.loads(s["table"])]).encode()}),
    "empty-model": lambda p, h, pl, s: _with_streams(p, h, {**s, "graph": b"", "table": b"[]"}, mode="codebook"),
    "fails-the-checker": lambda p, h, pl, s: _with_streams(p, h, {**s, "graph": _failing_checker(), "table": b"[]"},
                                                           mode="codebook"),
}


@pytest.mark.parametrize("case", list(EPK_CASES))
def test_malformed_package(package, tmp_path, case):
    header, payload, streams = package
    epk = EPK_CASES[case](tmp_path / "bad.epk", header, payload, streams)
    code, err = run_cli("unpack", epk, "-o", tmp_path / "out.onnx")
    assert_clean_error(code, err, "bad.epk")
    assert not (tmp_path / "out.onnx").exists()


# ---------------------------------------------------------------- targets

def _target(tmp_path: Path, extra: str) -> Path:
    text = ('name = "t"\ndescription = "d"\nbackend = "onnxruntime"\nprecisions = ["fp32"]\n'
            f'{extra}\n[qdq]\nactivations = "uint8-asymmetric-per-tensor"\n')
    (tmp_path / "t.toml").write_text(text)
    return tmp_path / "t.toml"


@pytest.mark.parametrize("case,needle", [("binary", "UTF-8"), ("execution_providers = [1, 2]", "execution_providers"),
                                         ("threads = 100000", "threads")])
def test_bad_target_file(folder, tmp_path, case, needle):
    if case == "binary":
        target = tmp_path / "t.toml"
        target.write_bytes(bytes(range(256)) * 2)
    else:
        target = _target(tmp_path, case)
    code, err = run_cli("build", folder / "m.onnx", "-t", target, "-o", tmp_path / "b.onnx")
    assert_clean_error(code, err, needle if case != "binary" else "TOML")
    assert not (tmp_path / "b.onnx").exists()


def test_profile_threads_are_bounded():
    from edgepack.runtime import MAX_THREADS, bound_threads

    assert bound_threads(100000) == MAX_THREADS and bound_threads(0) == 0 and bound_threads(3) == 3


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("body,needle", [
    ('step = "x"', "'step'"),
    ('targets = 5\n[[step]]\nrun = "optimize"', "'targets'"),
    ('[[step]]\nrun = "optimize"\ninput = 5', "input"),
    ('[[step]]\nrun = "prune"\nsparsity = "abc"', "sparsity"),
])
def test_bad_recipe(folder, tmp_path, body, needle):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{folder / "m.onnx"}"\n{body}\n')
    code, err = run_cli("run", recipe, "-o", tmp_path / "out")
    assert code in (1, 2), err
    assert_clean_error(code, err, needle, exit_code=code)


def test_recipe_targets_as_one_string_is_that_target(folder, tmp_path):
    from edgepack.recipe import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "{folder / "m.onnx"}"\ntargets = "x86-cpu"\n[[step]]\nrun = "build"\n')
    assert load_recipe(recipe).targets == ("x86-cpu",)


# ---------------------------------------------------------------- check

def _profile(samples) -> dict:
    return {"schema": "edgepack.profile/1", "samples_ms": samples,
            "model": {"name": "m.onnx", "sha256": "0" * 64}, "target": "x86-cpu", "batch": 1}


@pytest.mark.parametrize("bad", [[True] * 12, [float("nan")] + [1.0] * 11, [float("inf")] + [1.0] * 11,
                                 [0.0] * 12, [-1.0] * 12])
def test_check_refuses_bad_timings(tmp_path, bad):
    from edgepack.profile.regression import PROFILE_SCHEMA

    good = {**_profile([1.0 + i * 0.01 for i in range(12)]), "schema": PROFILE_SCHEMA}
    (tmp_path / "cur.json").write_text(json.dumps(good))
    (tmp_path / "base.json").write_text(json.dumps({**good, "samples_ms": bad}))
    code, err = run_cli("check", tmp_path / "cur.json", "--baseline", tmp_path / "base.json")
    assert_clean_error(code, err, "base.json", exit_code=2)


# ---------------------------------------------------------------- quiet libraries

def test_library_warnings_stay_off_stderr(folder, tmp_path):
    """numpy's overflow RuntimeWarning (and onnx-ir / ORT logs) would come before the error line."""
    np.savez(tmp_path / "big.npz", x=np.full((2, 3, 8, 8), 3e38, np.float32))
    code, err = run_cli("quantize", folder / "m.onnx", "-t", "x86-cpu", "--data", tmp_path / "big.npz",
                        "-o", tmp_path / "q.onnx")
    assert_clean_error(code, err)
