"""The rounding stage on real data: the MNIST CNN from ../shared, real digits.

    Input3 -> Conv(5x5, 8) -> Relu -> MaxPool -> Conv(5x5, 16) -> Relu -> MaxPool -> MatMul(256x10) -> Add

Quantized with nearest rounding, then fitted (quant/rounding.py) on 128 digits; measured on 256
other digits in ONNX Runtime: each fitted layer's output is closer to the float model's than with
nearest rounding, the weights stay on the policy's grid, and the result still passes check-qdq.
"""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from edgepack import io, runtime
from edgepack.calib import calibrate
from edgepack.graph import const_array, copy_model
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.decisions import Decisions
from edgepack.quant.prepare import prepare
from edgepack.quant.qdq import QuantPolicy, insert_qdq, tensors_to_calibrate
from edgepack.quant.rounding import _cone, round_weights, techniques_for
from edgepack.quant.validate import prepare_opset
from edgepack.targets import load_target
from tests.helpers import SHARED_DATA, SHARED_MODELS, requires_shared

pytestmark = requires_shared


def _digits() -> np.ndarray:
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)


def _quantized(target_name: str, calib, model_file: str = "mnist_cntk_fp32.onnx"):
    target = load_target(target_name)
    model = io.load(SHARED_MODELS / model_file)
    prepare(model)
    policy = prepare_opset(model, QuantPolicy.for_target(target))
    teacher = copy_model(model)
    ranges = calibrate(copy_model(model), calib, method="minmax", symmetric=policy.symmetric_activations,
                       progress=False, only=tensors_to_calibrate(model, policy))
    insert_qdq(model, ranges, policy)
    return model, teacher, policy, target


def _layer_errors(model, teacher, names, x) -> np.ndarray:
    got = runtime.session(_cone(model, names), optimize=False).run(names, {"Input3": x})
    want = runtime.session(_cone(teacher, names)).run(names, {"Input3": x})
    return np.array([np.mean((g - w) ** 2) / np.var(w) for g, w in zip(got, want)])


@pytest.mark.parametrize("target_name", ["jetson-orin-nano"])
def test_rounding_lowers_held_out_layer_error(target_name):
    digits = _digits()
    calib = [{"Input3": digits[i:i + 64]} for i in range(0, 128, 64)]
    held_out = digits[-256:]
    nearest, teacher, policy, target = _quantized(target_name, calib)
    fitted = copy_model(nearest)
    decisions = Decisions()
    report = round_weights(fitted, teacher, calib, policy, method="all", decisions=decisions, iterations=200)
    names = [r.node for r in report.layers]
    assert len(names) == 3 and all(name in decisions for name in names)
    outputs = [n.outputs[0].name for n in fitted.graph if n.name in names or f"<{n.op_type} -> {n.outputs[0].name}>" in names]
    before = _layer_errors(nearest, teacher, outputs, held_out)
    after = _layer_errors(fitted, teacher, outputs, held_out)
    assert np.all(after < before), (before, after)
    # weights stay on the grid: integers within [-qmax, qmax] around the DQ's zero point
    for node in fitted.graph:
        stored = const_array(node.inputs[0]) if node.op_type == "DequantizeLinear" else None
        if stored is not None and stored.dtype in (np.int8, np.uint8):
            q = stored.astype(np.int32)
            zero = const_array(node.inputs[2]).astype(np.int32)
            if q.ndim and zero.ndim and q.shape[0] == zero.shape[0]:
                zero = zero.reshape((-1,) + (1,) * (q.ndim - 1))
            if q.size > 16:  # a weight, not an activation zero point
                assert np.abs(q - zero).max() <= policy.weight_qmax
    assert check_qdq(fitted, target) == []


def test_techniques_parse():
    assert techniques_for("nearest") == ()
    assert techniques_for("bias+clip") == ("clip", "bias")
    assert techniques_for("all") == ("clip", "adaround", "bias", "block")
    with pytest.raises(Exception, match="unknown technique"):
        techniques_for("stochastic")
    # auto: learned rounding where INT8 measured lossy (TensorRT, 7-bit weights), else nearest
    auto = {name: techniques_for("auto", QuantPolicy.for_target(load_target(name)))
            for name in ("jetson-orin-nano", "x86-cpu", "x86-cpu-vnni")}
    assert auto == {"jetson-orin-nano": ("adaround",), "x86-cpu": ("adaround",), "x86-cpu-vnni": ()}


@pytest.mark.parametrize("weight_qmax", [127, 63])
def test_cpu_grids_uint8_zero_point_128_and_7_bit(weight_qmax):
    """x86-cpu's uint8 weights (zero point 128), with 8- or 7-bit range: fitted weights stay on it."""
    import dataclasses

    digits = _digits()
    calib = [{"Input3": digits[:64]}]
    target = load_target("x86-cpu")
    model = io.load(SHARED_MODELS / "mnist_cntk_fp32.onnx")
    prepare(model)
    policy = prepare_opset(model, QuantPolicy.for_target(target))
    policy = dataclasses.replace(policy, weight_qmax=weight_qmax, weight_dtype="uint8")
    teacher = copy_model(model)
    ranges = calibrate(copy_model(model), calib, method="minmax", progress=False,
                       only=tensors_to_calibrate(model, policy))
    insert_qdq(model, ranges, policy)
    report = round_weights(model, teacher, calib, policy, method="clip+bias")
    assert len(report.layers) == 3
    for layer in report.layers:
        assert layer.error_fitted <= layer.error_nearest * 1.001, layer
    weights = [n for n in model.graph if n.op_type == "DequantizeLinear" and const_array(n.inputs[0]) is not None
               and const_array(n.inputs[0]).dtype == np.uint8 and const_array(n.inputs[0]).size > 16]
    assert len(weights) == 3
    for dq in weights:
        q = const_array(dq.inputs[0]).astype(np.int32)
        assert np.all(const_array(dq.inputs[2]) == 128) and np.abs(q - 128).max() <= weight_qmax
    assert check_qdq(model, target) == []
    runtime.session(model).run(None, {"Input3": digits[-8:]})  # ORT loads and runs the fused artifact


def _cifar(count: int) -> np.ndarray:
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    with np.load(SHARED_DATA / "cifar10_test" / "cifar10_test_jpeg_decoded.npz") as d:
        x = d["images"][:count]
    return ((x.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy()


def test_block_target_lowers_residual_block_output_error():
    """ResNet-20's residual blocks: fitted to the block's output (Add: conv2 + skip) instead of
    conv2's own, the block outputs of held-out images are closer to the float model's."""
    images = _cifar(320)
    calib, held_out = [{"input": images[:64]}], images[64:]
    nearest, teacher, policy, _ = _quantized("x86-cpu", calib, "resnet20_cifar10.onnx")
    adds = [n.outputs[0].name for n in teacher.graph if n.op_type == "Add"]
    want = runtime.session(_cone(teacher, adds)).run(adds, {"input": held_out})
    errors = {}
    for method in ("clip", "clip+block"):
        fitted = copy_model(nearest)
        report = round_weights(fitted, teacher, calib, policy, method=method)
        got = runtime.session(_cone(fitted, adds), optimize=False).run(adds, {"input": held_out})
        errors[method] = np.array([np.mean((g - w) ** 2) / np.var(w) for g, w in zip(got, want)])
    assert len(report.layers) == 20
    assert errors["clip+block"].mean() < errors["clip"].mean(), errors


@pytest.mark.slow
def test_default_rounding_recovers_shufflenet_7_bit_weight_loss():
    """x86-cpu's 7-bit weights on ShuffleNetV2 (real ImageNet weights): the default rounding (auto =
    learned rounding) agrees with FP32 on more held-out crops than nearest rounding."""
    from PIL import Image

    from edgepack.quant import quantize

    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def crops(paths, flips):
        out = []
        for path in paths:
            im = Image.open(path).convert("RGB").resize((256, 256), Image.BILINEAR)
            a = (np.asarray(im, np.float32) / 255 - mean) / std
            for top, left in ((16, 16), (0, 0), (32, 32)) if flips else ((16, 16),):
                c = a[top:top + 224, left:left + 224]
                out += [c.transpose(2, 0, 1), c[:, ::-1].transpose(2, 0, 1)] if flips else [c.transpose(2, 0, 1)]
        return np.stack(out).astype(np.float32)

    paths = sorted((SHARED_DATA / "coco_val2017_100").glob("*.jpg"))
    calib, held_out = crops(paths[:50], False), crops(paths[50:], True)
    base = io.load(SHARED_MODELS / "shufflenet-v2-12_from_int8_fp32.onnx")

    def top1(model):
        sess = runtime.session(model)
        return np.concatenate([sess.run(None, {"input": held_out[i:i + 50]})[0].argmax(1)
                               for i in range(0, len(held_out), 50)])

    reference = top1(base)
    agreement = {}
    for rounding in ("nearest", "auto"):
        model = copy_model(base)
        quantize(model, [{"input": calib[i:i + 25]} for i in range(0, 50, 25)], target="x86-cpu",
                 rounding=rounding, runtime_check=False, placement="rules")
        agreement[rounding] = float((top1(model) == reference).mean())
    assert agreement["auto"] > agreement["nearest"] + 0.01, agreement
