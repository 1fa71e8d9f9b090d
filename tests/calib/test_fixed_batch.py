"""A model whose input fixes the batch at 1 (or 2) takes multi-sample data: fed B samples at a time."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.calib import calibrate
from edgepack.calib.data import InputSpec, open_dataset
from edgepack.quant.compare import compare_models
from tests.helpers import model_from_text, run_ort

#   x[1,4] -> MatMul(W) -> Relu -> y[1,3]
FIXED_1 = """
<ir_version: 8, opset_import: ["" : 17]>
fixed (float[1,4] x) => (float[1,3] y) <float[4,3] w = {1,0,0, 0,1,0, 0,0,1, 1,1,-1}> {
  m = MatMul(x, w)
  y = Relu(m)
}
"""


def _npz(tmp_path, n=7):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    labels = rng.integers(0, 3, n)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    return tmp_path / "d.npz", x, labels


@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_fixed_batch_one_is_fed_one_sample_at_a_time(tmp_path, batch_size):
    path, x, _ = _npz(tmp_path)
    spec = [InputSpec("x", (1, 4), np.dtype(np.float32))]
    batches = list(open_dataset(path, spec, batch_size=batch_size))
    assert [b["x"].shape for b in batches] == [(1, 4)] * 7
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)


def test_fixed_batch_two_drops_an_odd_remainder_with_a_warning(tmp_path, caplog):
    path, x, labels = _npz(tmp_path)
    spec = [InputSpec("x", (2, 4), np.dtype(np.float32))]
    batches = list(open_dataset(path, spec, batch_size=3, labels="labels").batches(with_labels=True))
    assert [b["x"].shape[0] for b in batches] == [2, 2, 2]
    np.testing.assert_array_equal(np.concatenate([b["__labels__"] for b in batches]), labels[:6])
    assert "dropped the last 1 sample" in caplog.text


def test_calibrate_and_compare_run_a_batch_one_model_on_many_samples(tmp_path):
    path, x, labels = _npz(tmp_path)
    model = model_from_text(FIXED_1)
    ranges = calibrate(model, path, method="minmax", progress=False)
    assert ranges.samples == 7
    outputs = np.concatenate([run_ort(model_from_text(FIXED_1), {"x": row[None]})[0] for row in x])
    lo, hi = ranges["y"]
    assert lo == pytest.approx(float(outputs.min())) and hi == pytest.approx(float(outputs.max()))
    result = compare_models(model_from_text(FIXED_1), model_from_text(FIXED_1), path, layers=False)
    assert result["accuracy"]["samples"] == 7
    assert result["accuracy"]["a"] == pytest.approx(float((outputs.argmax(1) == labels).mean()))
