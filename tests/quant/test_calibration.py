"""Calibration data readers, streaming observers and ranges files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgepack import io
from edgepack.calib import Ranges, calibrate
from edgepack.calib.data import InputSpec, open_dataset
from edgepack.calib.observers import HistogramObserver
from edgepack.errors import EdgepackError
from edgepack.resources import data_dir, example_model

SPEC = [InputSpec("input", ("N", 1, 8, 8), np.dtype(np.float32))]


def test_npz_streams_in_batches_and_matches_the_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((70, 1, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "d.npz", input=x)
    batches = list(open_dataset(tmp_path / "d.npz", SPEC, batch_size=32))
    assert [len(b["input"]) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([b["input"] for b in batches]), x)
    np.save(tmp_path / "d.npy", x)
    assert sum(len(b["input"]) for b in open_dataset(tmp_path / "d.npy", SPEC, limit=40)) == 40


def test_calibration_folder_and_iterables():
    folder = data_dir("calibration") / "digits"
    assert sum(len(b["input"]) for b in open_dataset(folder, SPEC)) == 256

    class Reader:  # the onnxruntime CalibrationDataReader protocol
        def __init__(self):
            self.items = iter([{"input": np.zeros((4, 1, 8, 8), np.float32)}] * 3)

        def get_next(self):
            return next(self.items, None)

    assert sum(len(b["input"]) for b in open_dataset(Reader(), SPEC)) == 12


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 1, 9, 9), np.float32), "shape"),
    (np.full((4, 1, 8, 8), np.nan, np.float32), "NaN"),
    (np.zeros((4, 1, 8, 8), "U1"), "numeric array"),
])
def test_bad_data_is_refused_naming_the_file(tmp_path, array, message):
    np.savez(tmp_path / "bad.npz", input=array)
    with pytest.raises(EdgepackError, match=f"bad.npz.*{message}"):
        list(open_dataset(tmp_path / "bad.npz", SPEC))


def test_missing_input_array_names_the_arrays_and_how_to_pick_one(tmp_path):
    np.savez(tmp_path / "d.npz", pixels=np.zeros((2, 1, 8, 8), np.float32), mask=np.zeros((2, 1)))
    with pytest.raises(EdgepackError, match=r"no array 'input' \(has mask, pixels\).*--data .*d.npz:"):
        list(open_dataset(tmp_path / "d.npz", SPEC))


def test_a_single_array_npz_feeds_a_single_input_model_whatever_its_name(tmp_path):
    np.savez(tmp_path / "d.npz", pixels=np.ones((3, 1, 8, 8), np.float32), labels=np.zeros(3))
    (batch,) = list(open_dataset(tmp_path / "d.npz", SPEC))
    np.testing.assert_array_equal(batch["input"], np.ones((3, 1, 8, 8), np.float32))


def test_histogram_grows_exactly_and_memory_is_fixed():
    rng = np.random.default_rng(0)
    obs, everything = HistogramObserver(bins=256), []
    for scale in (1, 3, 10, 0.5):  # the range grows twice
        x = rng.standard_normal(10_000) * scale
        obs.update(x)
        everything.append(x)
    allx = np.concatenate(everything)
    assert obs.hist.size == 256 and obs.hist.sum() == allx.size
    assert obs.range("minmax", symmetric=False) == pytest.approx((allx.min(), allx.max()), rel=1e-6)
    lo, hi = obs.range("percentile", symmetric=False, percentile=99.0)
    width = 2 * obs.radius / obs.bins
    assert abs(hi - np.percentile(allx, 99.0)) <= 2 * width
    assert abs(lo - np.percentile(allx, 1.0)) <= 2 * width


def _fake_quant_error(x: np.ndarray, t: float) -> float:
    step = 2 * t / 255
    return float(np.sum((np.clip(np.round(x / step), -127, 127) * step - x) ** 2))


def test_entropy_and_percentile_clip_rare_outliers_and_mse_minimizes_error():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(100_000)
    x[:5] = 60.0  # rare outliers
    obs = HistogramObserver()
    obs.update(x)
    for method in ("entropy", "percentile"):
        lo, hi = obs.range(method, symmetric=True)
        assert 2.0 < hi < 20.0, (method, hi)
    _, t_mse = obs.range("mse", symmetric=True)
    errors = {t: _fake_quant_error(x, t) for t in (1.0, 4.0, 8.0, 30.0, 60.0)}
    assert _fake_quant_error(x, t_mse) <= 1.02 * min(errors.values()), (t_mse, errors)
    y = rng.standard_normal(100_000)  # no outliers: MSE clips the far tail
    obs = HistogramObserver()
    obs.update(y)
    _, t_mse = obs.range("mse", symmetric=True)
    assert t_mse < np.abs(y).max()
    assert _fake_quant_error(y, t_mse) < _fake_quant_error(y, np.abs(y).max())


def test_calibrate_ranges_round_trip_and_tensorrt_cache(tmp_path):
    model = io.load(example_model())
    ranges = calibrate(model, data_dir("calibration") / "digits", method="minmax", progress=False)
    assert ranges.samples == 256 and ranges["input"] == pytest.approx((0.0, 1.0))
    assert ranges["relu1_out"][0] == 0.0 and ranges["relu1_out"][1] > 0
    ranges.save(tmp_path / "r.json")
    again = Ranges.load(tmp_path / "r.json")
    assert again.tensors == ranges.tensors and json.loads((tmp_path / "r.json").read_text())["schema"]
    ranges.to_tensorrt_cache(tmp_path / "calib.cache")
    lines = (tmp_path / "calib.cache").read_text().splitlines()
    assert lines[0].startswith("TRT-") and len(lines) == len(ranges.tensors) + 1
    name, hexscale = lines[1].split(": ")
    import struct

    assert struct.unpack(">f", bytes.fromhex(hexscale))[0] == pytest.approx(max(map(abs, ranges[name])) / 127, rel=1e-6)


def test_calibration_memory_does_not_grow_with_samples():
    obs_small, obs_large = HistogramObserver(), HistogramObserver()
    rng = np.random.default_rng(0)
    obs_small.update(rng.standard_normal(1000))
    for _ in range(50):
        obs_large.update(rng.standard_normal(1000))
    assert obs_small.hist.nbytes == obs_large.hist.nbytes


def test_tensorrt_cache_header_per_version_and_refused_on_11(tmp_path):
    from edgepack.calib.ranges import tensorrt_cache_header
    from edgepack.errors import EdgepackError

    assert tensorrt_cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert tensorrt_cache_header("10.3", "minmax") == "TRT-100300-MinMaxCalibration"
    ranges = Ranges("entropy", {"x": (-1.0, 2.0)})
    with pytest.raises(EdgepackError, match="TensorRT 11.4.1 does not have.*hint: use `edgepack quantize"):
        ranges.to_tensorrt_cache(tmp_path / "c.cache", tensorrt_version="11.4.1")
    assert not (tmp_path / "c.cache").exists()
    ranges.to_tensorrt_cache(tmp_path / "c.cache", tensorrt_version="10.3.0")
    assert (tmp_path / "c.cache").read_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"


def test_calibrate_cli_refuses_a_cache_for_tensorrt_11(tmp_path, capsys):
    from edgepack.cli import main

    code = main(["calibrate", str(example_model()), "--data", str(data_dir("calibration") / "digits"),
                 "-o", str(tmp_path / "r.json"), "--tensorrt-cache", str(tmp_path / "c.cache"),
                 "--target", "jetson-agx-thor"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(err) == 1
    assert "--tensorrt-cache" in err[0] and "jetson-agx-thor" in err[0] and "edgepack quantize" in err[0]
    assert not list(tmp_path.iterdir())  # refused before calibrating: nothing written
