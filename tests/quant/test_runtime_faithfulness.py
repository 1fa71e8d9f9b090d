"""Deployed INT8 you can trust: the x86-cpu form runs exactly on every x86 CPU, the runtime check
compares the deployed (fused) model with its QDQ math, and compare measures what ships."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepack import io
from edgepack.cpu import host_target
from edgepack.errors import EdgepackError
from edgepack.graph import const_array
from edgepack.quant import check_qdq, quantize
from edgepack.quant.compare import compare, pair_tensors
from edgepack.quant.faithfulness import check_runtime
from edgepack.resources import data_dir, example_model
from edgepack.targets import load_target
from tests.helpers import SHARED_DATA, SHARED_MODELS, edgepack_cli, requires_shared

DIGITS = data_dir("calibration") / "digits"


def _weight_dqs(model):
    return [n for n in model.graph if n.op_type == "DequantizeLinear" and const_array(n.inputs[0]) is not None
            and const_array(n.inputs[0]).dtype != np.int32]


def test_x86_cpu_weights_are_7_bit_so_u8s8_kernels_stay_exact_without_vnni():
    #   x -> Q(u8)/DQ -> Conv <- DQ(W: int8 in [-63, 63])     (u8 x s7 pairs fit int16)
    model = io.load(example_model())
    quantize(model, DIGITS, target="x86-cpu", runtime_check=False, placement="rules")
    dqs = _weight_dqs(model)
    assert len(dqs) == 5
    for dq in dqs:
        q = const_array(dq.inputs[0])
        assert q.dtype == np.int8 and int(np.abs(q.astype(np.int16)).max()) == 63
    assert not check_qdq(model, load_target("x86-cpu"))
    vnni = io.load(example_model())
    quantize(vnni, DIGITS, target="x86-cpu-vnni", runtime_check=False)  # 8-bit activations and weights
    problems = check_qdq(vnni, load_target("x86-cpu"))
    assert len(problems) == len(_weight_dqs(vnni)) > 0 and all("saturates" in p for p in problems)
    assert not check_qdq(vnni, load_target("x86-cpu-vnni"))
    seven = io.load(example_model())  # the other exact form: 7-bit activations with 8-bit weights
    text = load_target("x86-cpu").path.read_text().replace('"uint8-asymmetric-per-tensor"', '"uint7-asymmetric-per-tensor"')
    text = text.replace('"int7-symmetric-per-channel"', '"int8-symmetric-per-channel"').replace('name = "x86-cpu"', 'name = "u7"')
    path = Path(tempfile.mkdtemp()) / "u7.toml"
    path.write_text(text)
    result = quantize(seven, DIGITS, target=str(path), runtime_check=False)
    assert not check_qdq(seven, load_target(str(path)))
    for name, (lo, hi) in result.ranges.tensors.items():  # every calibrated range maps into codes 0..127
        q = next((n for n in seven.graph if n.op_type == "QuantizeLinear" and n.inputs[0].name == name), None)
        if q is not None:
            scale, zero = float(const_array(q.inputs[1])), int(const_array(q.inputs[2]))
            assert 0 <= round(min(lo, 0) / scale) + zero and round(max(hi, 0) / scale) + zero <= 127


def _saturating_pairs(a_u8: np.ndarray, w_s8: np.ndarray) -> int:
    """How many u8 x s8 product pairs (adjacent k) overflow int16, as VPMADDUBSW sums them on CPUs
    without VNNI. a: [M, K] uint8, w: [N, K] int8."""
    k = a_u8.shape[1] // 2 * 2
    a = a_u8[:, :k].astype(np.int32).reshape(len(a_u8), -1, 2)
    w = w_s8[:, :k].astype(np.int32).reshape(len(w_s8), -1, 2)
    pair = np.einsum("mpi,npi->mnp", a, w)
    return int(((pair > 32767) | (pair < -32768)).sum())


def test_int8_weights_overflow_int16_pair_sums_on_real_activations_and_7_bit_operands_cannot():
    # the hazard the x86-cpu target avoids, on the digits model's real inputs (first Conv, im2col)
    model = io.load(example_model())
    with np.load(DIGITS / "calib.npz") as d:
        x = d["input"][:16]
    conv = next(n for n in model.graph if n.op_type == "Conv")
    w = const_array(conv.inputs[1]).reshape(const_array(conv.inputs[1]).shape[0], -1)
    patches = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))  # [N, C, H', W', 3, 3]
    cols = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, w.shape[1])
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    a_u8 = np.clip(np.round((cols - lo) / ((hi - lo) / 255)), 0, 255).astype(np.uint8)
    for qmax, overflow in ((127, True), (63, False)):
        scale = np.abs(w).max(axis=1, keepdims=True) / qmax
        w_q = np.clip(np.round(w / scale), -qmax, qmax).astype(np.int8)
        assert (_saturating_pairs(a_u8, w_q) > 0) is overflow
    # x86-cpu's form: 7-bit activations (codes 0..127) with full 8-bit weights cannot overflow
    a_u7 = np.clip(np.round((cols - lo) / ((hi - lo) / 127)), 0, 127).astype(np.uint8)
    w_q = np.clip(np.round(w / (np.abs(w).max(axis=1, keepdims=True) / 127)), -127, 127).astype(np.int8)
    assert _saturating_pairs(a_u7, w_q) == 0 and 2 * 127 * 127 <= 32767
    assert 2 * 255 * 255 < 2**31  # U8U8: both widened to 16 bits, pairs summed in int32


def test_runtime_check_digits_fused_matches_qdq_math():
    result = quantize(io.load(example_model()), DIGITS, target="x86-cpu")
    check = result.runtime_check
    assert check.ok and check.samples == 16 and check.message is None
    assert check.runtime_sqnr_db > check.quantization_sqnr_db + 3
    assert check.top1_agreement == 1.0
    assert result.to_json()["runtime_check"]["ok"] is True


@requires_shared
def test_runtime_check_resnet20_fused_matches_qdq_math(tmp_path):
    with np.load(SHARED_DATA / "cifar10_test" / "cifar10_test_jpeg_decoded.npz") as d:
        images = d["images"][:48]
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = ((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    calib = [{"input": x[i:i + 16]} for i in range(0, 48, 16)]
    result = quantize(SHARED_MODELS / "resnet20_cifar10.onnx", calib, target="x86-cpu", method="minmax")
    check = result.runtime_check
    assert check.ok, check.message
    assert check.runtime_sqnr_db >= check.quantization_sqnr_db + 3


def test_runtime_check_names_saturation_when_the_deployed_model_differs(tmp_path, monkeypatch):
    model = io.load(example_model())
    quantize(model, DIGITS, target="x86-cpu-vnni", runtime_check=False)
    good = io.save(model, tmp_path / "q.onnx")
    for dq in _weight_dqs(model):  # a deployed model whose integer products went wrong
        q = const_array(dq.inputs[0])
        dq.inputs[0].const_value = __import__("onnx_ir").tensor((q.astype(np.int16) * 3 // 4).astype(np.int8))
    bad = io.save(model, tmp_path / "bad.onnx")
    monkeypatch.setattr("edgepack.cpu.int8_dot_saturates", lambda flags=None: True)
    check = check_runtime(good, DIGITS, float_model=example_model(), deployed=bad, target="x86-cpu-vnni")
    assert not check.ok
    assert "VNNI" in check.message and "-t x86-cpu" in check.message and "x86-cpu-vnni" in check.message
    assert check_runtime(good, DIGITS, float_model=example_model(), target="x86-cpu-vnni").ok


def _plain_ort_accuracy(path, x, y, **options) -> float:
    so = ort.SessionOptions()
    for k, v in options.items():
        setattr(so, k, v)
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return float((session.run(None, {"input": x})[0].argmax(1) == y).mean())


@pytest.mark.parametrize("target", ["x86-cpu", "jetson-orin-nano"])
def test_compare_accuracy_is_the_accuracy_of_the_model_run_outside_edgepack(tmp_path, target):
    out = tmp_path / "q.onnx"
    quantize(example_model(), DIGITS, target=target, method="minmax", output=out, runtime_check=False)
    with np.load(DIGITS / "eval.npz") as d:
        x, y = d["input"], d["labels"]
    result = compare(example_model(), out, DIGITS, target=target)
    options = {}
    if target.startswith("jetson"):  # TensorRT cannot run here: its proxy is the QDQ math
        options["graph_optimization_level"] = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        assert "QDQ math" in result.runtime["b"]
    assert result.accuracy["b"] == _plain_ort_accuracy(out, x, y, **options)
    assert result.accuracy["a"] == _plain_ort_accuracy(example_model(), x, y)
    assert 0.97 <= result.accuracy["top1_agreement"] <= 1.0


def test_compare_pairs_tensors_by_what_they_compute_not_by_name(tmp_path):
    # A: Conv -> conv1_out -> BN -> bn1_out -> Relu        B (BN folded): Conv -> conv1_out -> Relu
    out = tmp_path / "q.onnx"
    quantize(example_model(), DIGITS, target="x86-cpu", output=out, runtime_check=False)
    pairs = dict(pair_tensors(io.load(example_model()), io.load(out)))
    assert pairs["bn1_out"] == "conv1_out" and "conv1_out" not in pairs
    assert pairs["relu1_out"] == "relu1_out_dequantized"  # what the next layer reads
    layers = {row["tensor"]: row for row in compare(example_model(), out, DIGITS).layers}
    assert layers["bn1_out"]["cosine"] > 0.999  # a wrong pairing (pre-BN vs post-BN) is far off


def test_host_target_from_cpu_flags_and_cli():
    assert host_target(frozenset({"avx2", "fma"}))[0] in ("x86-cpu", "arm64-cpu")
    if host_target(frozenset({"avx2"}))[0] == "x86-cpu":  # on an x86 machine
        assert host_target(frozenset({"avx2", "avx512f"}))[0] == "x86-cpu"
        assert host_target(frozenset({"avx2", "avx_vnni"}))[0] == "x86-cpu-vnni"
        assert host_target(frozenset({"avx512f", "avx512_vnni"}))[0] == "x86-cpu-vnni"
    r = edgepack_cli("targets", "--host", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["target"] == host_target()[0] and load_target(report["target"]).backend == "onnxruntime"


def test_target_that_saturates_refuses_int8_weights(tmp_path):
    text = (load_target("x86-cpu").path.read_text()
            .replace('weights = "int7-symmetric-per-channel"', 'weights = "int8-symmetric-per-channel"'))
    (tmp_path / "t.toml").write_text(text)
    with pytest.raises(EdgepackError, match="qdq.weights.*int8_saturates"):
        load_target(tmp_path / "t.toml")


def test_one_shot_data_sources_serve_every_pass():
    # equalization, calibration and the runtime check each read the data: a generator and an ORT
    # CalibrationDataReader are read once, then reused
    with np.load(DIGITS / "calib.npz") as d:
        x = d["input"][:64]

    class Reader:  # onnxruntime.quantization.CalibrationDataReader protocol
        def __init__(self):
            self.items = iter([{"input": x[i:i + 16]} for i in range(0, 64, 16)])

        def get_next(self):
            return next(self.items, None)

    for source in ((({"input": x[i:i + 16]}) for i in range(0, 64, 16)), Reader()):
        result = quantize(example_model(), source, target="x86-cpu", method="minmax")
        assert result.ranges.samples == 64 and result.runtime_check.samples == 16 and result.runtime_check.ok


def test_calibrate_reads_every_sample_of_a_generator():
    from edgepack.calib import calibrate

    with np.load(DIGITS / "calib.npz") as d:
        x = d["input"][:48]
    ranges = calibrate(io.load(example_model()), ({"input": x[i:i + 16]} for i in range(0, 48, 16)),
                       method="minmax", progress=False)
    assert ranges.samples == 48
