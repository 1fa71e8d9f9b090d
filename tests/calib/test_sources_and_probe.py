"""Calibration sources (image folders, ORT's CalibrationDataReader) and the calibration probe."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack import io
from edgepack.calib import calibrate
from edgepack.calib.data import InputSpec, open_dataset
from edgepack.errors import EdgepackError
from tests.helpers import model_from_text

RGB_SPEC = [InputSpec("x", ("N", 3, 4, 4), np.dtype(np.float32))]


def _image_folder(tmp_path, manifest: str):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[..., 0] = 255  # pure red, 6 high x 8 wide
    Image.fromarray(pixels).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(pixels[:, ::-1].copy()).save(tmp_path / "imgs" / "b.png")
    (tmp_path / "manifest.toml").write_text(manifest)
    return tmp_path


def test_image_folder_resizes_crops_normalizes_and_orders_channels(tmp_path):
    folder = _image_folder(tmp_path, """
[images]
folder = "imgs"
resize = 4        # shorter side 6 -> 4: 5x4
crop = 4
scale = 0.00392156862745098
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
channel_order = "BGR"
layout = "NCHW"
""")
    (batch,) = list(open_dataset(folder, RGB_SPEC, batch_size=8))
    x = batch["x"]
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    # red lands in the last channel (BGR), normalized to (1 - 0.5) / 0.5 = 1; the others to -1
    np.testing.assert_allclose(x[:, 2], 1.0, atol=1e-5)
    np.testing.assert_allclose(x[:, :2], -1.0, atol=1e-5)


def test_image_folder_with_wrong_size_is_refused(tmp_path):
    folder = _image_folder(tmp_path, '[images]\nfolder = "imgs"\ncrop = 5\n')
    with pytest.raises(EdgepackError, match="shape"):
        list(open_dataset(folder, RGB_SPEC))


def test_onnxruntime_calibration_data_reader_is_accepted():
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"x": np.ones((2, 3, 4, 4), np.float32)}] * 3)

        def get_next(self):
            return next(self.items, None)

    assert sum(len(b["x"]) for b in open_dataset(Reader(), RGB_SPEC)) == 6


def test_inf_in_an_iterable_is_an_error():
    bad = [{"x": np.full((1, 3, 4, 4), np.inf, np.float32)}]
    with pytest.raises(EdgepackError, match="NaN or Inf"):
        list(open_dataset(bad, RGB_SPEC))


#   x ─► Conv(W, b) ─► c ─► Relu ─► r ─► Conv(W2) ─► y
CONV_RELU_CONV = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 2, 5, 5] x) => (float[N, 2, 5, 5] y) <float[2, 2, 3, 3] W = {1.0, -1.0, 2.0, 0.0, 0.5, 1.0, -2.0, 1.0, 0.0,
    1.0, 1.0, -1.0, 0.5, 0.5, 1.0, 0.0, -1.0, 2.0, 1.0, 0.0, -1.0, 2.0, 1.0, 1.0, 0.0, 0.5, -0.5, 1.0, 1.0, 1.0, 0.0,
    -2.0, 1.0, 0.5, 0.0, 1.0}, float[2] b = {0.1, -0.2}, float[2, 2, 1, 1] W2 = {1.0, -1.0, 0.5, 2.0}> {
  c = Conv <pads = [1, 1, 1, 1]> (x, W, b)
  r = Relu (c)
  y = Conv (r, W2)
}
"""


def test_probe_ranges_equal_numpy_extremes_and_only_restricts():
    model = model_from_text(CONV_RELU_CONV)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((4, 2, 5, 5)).astype(np.float32)} for _ in range(3)]
    ranges = calibrate(model, data, method="minmax", progress=False)
    assert set(ranges.tensors) == {"x", "c", "r", "y"}
    # reference: run the float model on each batch and take the extremes of r by hand
    from tests.helpers import run_ort
    import onnx_ir as ir

    probe = model_from_text(CONV_RELU_CONV.replace("=> (float[N, 2, 5, 5] y)", "=> (float[N, 2, 5, 5] y, float[N, 2, 5, 5] r)"))
    rs = np.concatenate([run_ort(probe, b)[1] for b in data])
    assert ranges["r"] == pytest.approx((float(rs.min()), float(rs.max())), rel=1e-6)
    only = calibrate(model_from_text(CONV_RELU_CONV), data, method="entropy", progress=False, only={"x", "r"})
    assert set(only.tensors) == {"x", "r"}
    assert only["r"][0] >= 0 and only["r"][1] <= rs.max() + 1e-6
    assert isinstance(model, ir.Model) and [n.op_type for n in model.graph] == ["Conv", "Relu", "Conv"]
    io.check_model(model)  # the input model is untouched by calibration


def test_a_sources_large_batches_are_cut_to_the_batch_size():
    """A source handing over 16 samples at once is read `batch_size` at a time (views, same order):
    calibration's memory budget holds whatever batches the caller makes."""
    x = np.arange(2 * 16 * 48, dtype=np.float32).reshape(32, 3, 4, 4)
    batches = list(open_dataset([{"x": x[:16]}, {"x": x[16:]}], RGB_SPEC, batch_size=3))
    assert [len(b["x"]) for b in batches] == [3, 3, 3, 3, 3, 1] * 2
    assert np.array_equal(np.concatenate([b["x"] for b in batches]), x)


def test_calibration_runs_at_most_the_batch_its_activation_budget_allows(monkeypatch):
    from edgepack import runtime
    import importlib

    calibrate_module = importlib.import_module("edgepack.calib.calibrate")
    per_sample = 4 * 2 * 5 * 5 * 4  # x, c, r, y: float32 [2, 5, 5] each
    monkeypatch.setattr(calibrate_module, "ACTIVATION_BUDGET_BYTES", 2 * per_sample)
    seen = []
    real_run = runtime.run

    def counting_run(session, names, feeds, **kwargs):
        seen.append(len(feeds["x"]))
        return real_run(session, names, feeds, **kwargs)

    monkeypatch.setattr(runtime, "run", counting_run)
    data = [{"x": np.random.default_rng(0).standard_normal((16, 2, 5, 5)).astype(np.float32)}]
    whole = calibrate(model_from_text(CONV_RELU_CONV), data, method="minmax", progress=False)
    assert seen and max(seen) == 2 and sum(seen) == 16 and whole.samples == 16
