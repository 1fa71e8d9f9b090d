"""Detectors quantize: a fixed batch of 1 is calibrated one sample at a time, opset 11 is upgraded
(or weights go per tensor) and never written invalid, detection-head outputs stay float, and
INT8 boxes agree with FP32 boxes on real COCO images (tests/quant/detector.py)."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from edgepack import io, runtime
from edgepack.calib.data import InputSpec, open_dataset
from edgepack.errors import EdgepackError
from edgepack.graph import copy_model
from edgepack.quant import quantize
from edgepack.quant import validate
from edgepack.quant.validate import default_opset, validate_quantized
from edgepack.targets import load_target
from tests.helpers import SHARED_DATA, check, edgepack_cli, requires_shared
from tests.quant import detector as det

SIZE = 160
TARGETS = ("x86-cpu", "jetson-orin-nano")


@functools.lru_cache(maxsize=1)
def _images() -> np.ndarray:
    folder = SHARED_DATA / "coco_val2017_100"
    if folder.is_dir():
        return det.coco_images(folder, 24, size=SIZE)
    rng = np.random.default_rng(0)  # without ../shared: smooth random images (structure tests only)
    small = rng.uniform(0, 255, (24, 3, SIZE // 8, SIZE // 8)).astype(np.float32)
    return np.ascontiguousarray(small.repeat(8, axis=2).repeat(8, axis=3))


@functools.lru_cache(maxsize=1)
def _detector_bytes() -> bytes:
    model = det.build(11, images=_images()[:8], obj_bias=-7.0, cls_bias=-4.0, size=SIZE)
    return ir.serde.serialize_model(model).SerializeToString()


def _detector() -> ir.Model:
    return ir.serde.deserialize_model(onnx.load_from_string(_detector_bytes()))


def test_fixed_batch_data_is_fed_one_sample_at_a_time():
    specs = [InputSpec("images", (1, 3, 4, 4), np.dtype(np.float32))]
    batches = list(open_dataset([{"images": np.zeros((5, 3, 4, 4), np.float32)}], specs, batch_size=32))
    assert [b["images"].shape[0] for b in batches] == [1] * 5
    dynamic = [InputSpec("images", ("N", 3, 4, 4), np.dtype(np.float32))]
    assert len(list(open_dataset([{"images": np.zeros((5, 3, 4, 4), np.float32)}], dynamic))) == 1


@pytest.mark.parametrize("target", TARGETS)
def test_opset11_batch1_detector_is_upgraded_valid_and_heads_stay_float(target):
    #   images[1,...] -> Conv/SiLU backbone -> FPN (Resize, Concat) -> per level: reg Conv,
    #   Sigmoid(obj Conv), Sigmoid(cls Conv) -> Concat -> Reshape -> Concat(levels) -> Transpose
    model = _detector()
    assert default_opset(model) == 11
    result = quantize(model, [{"images": _images()[:8]}], target=target, method="minmax")  # 8 samples, batch 1
    assert default_opset(model) >= 13
    check(model)
    runtime.session(model)
    dqs = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert any("axis" in n.attributes for n in dqs)  # per-channel weights, valid at opset 13
    output_producer = model.graph.outputs[0].producer()
    assert output_producer.op_type == "Transpose"
    head_concats = [n for n in model.graph if n.op_type == "Concat" and n.name.startswith("/head")]
    for node in head_concats:  # boxes beside probabilities: never one shared scale
        scales = [v.producer().inputs[1] for v in node.inputs
                  if v.producer() is not None and v.producer().op_type == "DequantizeLinear"]
        assert len({float(s.const_value.numpy()) for s in scales}) == len(scales)  # each input its own scale
        assert all(u.node.op_type != "QuantizeLinear" for u in node.outputs[0].uses())
    if not load_target(target).is_tensorrt:
        reasons = dict(result.skipped)
        assert "Sigmoid" in reasons["/head0/Concat"] and "graph output" in reasons["/head/Concat"]


def test_per_tensor_fallback_when_the_converter_cannot(monkeypatch):
    def refuse(model, version=13):
        raise EdgepackError("cannot convert the model from opset 11 to 13: no adapter")

    monkeypatch.setattr(validate, "upgrade_opset", refuse)
    model = _detector()
    quantize(model, [{"images": _images()[:4]}], target="x86-cpu", method="minmax")
    assert default_opset(model) == 11
    assert not any("axis" in n.attributes for n in model.graph if n.op_type == "DequantizeLinear")
    check(model)
    runtime.session(model)


def test_an_invalid_quantized_model_is_refused_before_it_is_written():
    model = _detector()
    conv = next(n for n in model.graph if n.op_type == "Conv")
    scale = ir.Value(name="s", const_value=ir.tensor(np.ones(16, np.float32), name="s"))
    zero = ir.Value(name="z", const_value=ir.tensor(np.zeros(16, np.int8), name="z"))
    q = ir.Value(name="wq", const_value=ir.tensor(np.zeros((16, 3, 3, 3), np.int8), name="wq"))
    for v in (scale, zero, q):
        model.graph.register_initializer(v)
    dq = ir.node("DequantizeLinear", [q, scale, zero], {"axis": 0}, name="per_channel_dq")  # axis: opset 13
    model.graph.insert_before(conv, dq)
    conv.replace_input_with(1, dq.outputs[0])
    with pytest.raises(EdgepackError, match="checker"):
        validate_quantized(model)


@pytest.mark.slow  # a fresh interpreter: ~3 s
def test_cli_quantizes_an_opset11_batch1_detector(tmp_path):
    model_path = tmp_path / "det.onnx"
    io.save(_detector(), model_path)
    np.savez(tmp_path / "calib.npz", images=_images()[:6])
    out = tmp_path / "det_int8.onnx"
    result = edgepack_cli("quantize", model_path, "--data", tmp_path / "calib.npz", "--target", "x86-cpu",
                          "--method", "minmax", "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(str(out), full_check=True)
    assert onnx.load(str(out)).opset_import[0].version >= 13


@requires_shared
@pytest.mark.slow  # 24 images x 3 runs per target: ~2-3 s each
@pytest.mark.parametrize("target", TARGETS)
def test_int8_boxes_agree_with_fp32_boxes_on_coco(target):
    images = _images()
    base = _detector()
    reference = det.detect(runtime.session(base), images)
    assert 3 <= np.mean([len(r[0]) for r in reference]) <= 60  # non-trivial, varied detections
    for method in ("minmax", "mse"):
        model = copy_model(base)
        quantize(model, [{"images": images}], target=target, method=method)
        # as the runtime runs it: ORT with all optimizations (CPU), the exact QDQ math (TensorRT)
        session = runtime.session(model, optimize=not load_target(target).is_tensorrt)
        recall, precision, _, _ = det.agreement(reference, det.detect(session, images))
        assert recall >= 0.85 and precision >= 0.85, (method, recall, precision)
