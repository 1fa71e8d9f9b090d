"""Preprocessing of arrays and image folders: one Preprocess, from flags, manifests and ranges files.

    uint8 [N,H,W,C] ─► resize ─► crop ─► x*scale ─► BGR? ─► (x-mean)/std ─► [N,C,H,W] float32
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from edgepack.calib import Ranges, calibrate
from edgepack.calib.data import InputSpec, has_labels, open_dataset, parse_data
from edgepack.calib.preprocess import Preprocess
from edgepack.cli import common
from edgepack.errors import EdgepackError
from edgepack.quant.compare import compare_models
from tests.helpers import assert_one_line_error, edgepack_cli, model_from_text, save_text_model

SPEC = [InputSpec("x", ("N", 3, 4, 4), np.dtype(np.float32))]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

#   x[N,3,4,4] ─► GlobalAveragePool ─► Flatten ─► y[N,3]   (per-channel means: a 3-class "classifier")
POOL = """
<ir_version: 8, opset_import: ["" : 17]>
pool (float[N,3,4,4] x) => (float[N,3] y) {
  p = GlobalAveragePool(x)
  y = Flatten(p)
}
"""


def _images(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)


def _expected(images):
    x = images.astype(np.float32) / 255
    return ((x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(0, 3, 1, 2)


def test_uint8_hwc_array_is_scaled_normalized_and_transposed(tmp_path):
    images = _images()
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(6) % 3, files=np.arange(6))
    pre = Preprocess(scale="1/255", mean=MEAN, std=STD, layout="NHWC:NCHW")
    batches = list(open_dataset(f"{tmp_path / 'd.npz'}:images", SPEC, batch_size=4, preprocess=pre))
    got = np.concatenate([b["x"] for b in batches])
    assert got.dtype == np.float32 and got.shape == (6, 3, 4, 4)
    np.testing.assert_allclose(got, _expected(images), rtol=1e-6, atol=1e-6)


def test_integer_data_for_a_float_input_is_refused_with_a_scale_hint(tmp_path):
    np.save(tmp_path / "d.npy", _images().transpose(0, 3, 1, 2).copy())
    with pytest.raises(EdgepackError, match=r"uint8 data, the model expects float32.*--scale 1/255"):
        list(open_dataset(tmp_path / "d.npy", SPEC))
    # --scale 1 feeds the values as they are
    (batch,) = list(open_dataset(tmp_path / "d.npy", SPEC, preprocess=Preprocess(scale=1)))
    np.testing.assert_array_equal(batch["x"], np.load(tmp_path / "d.npy").astype(np.float32))


def test_mean_and_std_on_integer_data_need_an_explicit_scale():
    with pytest.raises(EdgepackError, match="no --scale.*--scale 1/255"):
        Preprocess(mean=MEAN, std=STD).apply(_images())
    np.testing.assert_allclose(Preprocess(scale=1, mean=(128,), std=(64,)).apply(np.full((1, 2), 192, np.uint8)), 1.0)


def test_layout_mistake_gets_a_layout_hint(tmp_path):
    np.savez(tmp_path / "d.npz", images=_images())
    with pytest.raises(EdgepackError, match="--layout NHWC:NCHW"):
        list(open_dataset(tmp_path / "d.npz", SPEC, preprocess=Preprocess(scale=1 / 255)))


def test_resize_crop_and_bgr_on_arrays_match_the_image_folder_path(tmp_path):
    from PIL import Image

    images = np.random.default_rng(1).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    (tmp_path / "imgs").mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "manifest.toml").write_text('[images]\nfolder = "imgs"\n')
    pre = Preprocess(resize=4, crop=4, scale=1 / 255, mean=MEAN, std=STD, channel_order="BGR", layout="NCHW")
    np.savez(tmp_path / "a.npz", images)
    from_array = next(iter(open_dataset(tmp_path / "a.npz", SPEC, preprocess=pre)))["x"]
    from_folder = next(iter(open_dataset(tmp_path, SPEC, preprocess=pre)))["x"]  # flags override [images]
    np.testing.assert_allclose(from_array, from_folder, atol=1e-6)
    # reference: PIL bilinear resize 6x8 -> 4x5, centre crop 4x4, BGR, then mean/std, NCHW
    ref = np.stack([np.asarray(Image.fromarray(im).resize((5, 4), Image.BILINEAR))[:, 0:4] for im in images])
    np.testing.assert_allclose(from_array, _expected(ref[..., ::-1]), atol=1e-6)


def test_preprocess_round_trips_through_flags_manifest_and_ranges(tmp_path):
    parser = argparse.ArgumentParser()
    common.add_preprocess_args(parser)
    args = parser.parse_args(["--scale", "1/255", "--mean", "0.485,0.456,0.406", "--std", "(0.229, 0.224, 0.225)",
                              "--layout", "nhwc:nchw", "--channel-order", "bgr", "--resize", "36", "--crop", "32"])
    pre = Preprocess.from_args(args)
    assert pre == Preprocess(scale=1 / 255, mean=MEAN, std=STD, layout="NHWC->NCHW", channel_order="BGR",
                             resize=36, crop=32)
    assert Preprocess.from_manifest(json.loads(json.dumps(pre.to_json()))) == pre
    assert Preprocess.from_args(parser.parse_args([])) is None
    with pytest.raises(EdgepackError, match="unknown preprocessing key"):
        Preprocess.from_manifest({"scales": 2})
    ranges = Ranges("minmax", {"x": (0.0, 1.0)}, preprocess=pre.to_json())
    ranges.save(tmp_path / "r.json")
    assert Preprocess.from_manifest(Ranges.load(tmp_path / "r.json").preprocess) == pre


def test_calibrate_stores_preprocessing_and_compare_reads_labels_from_the_spec(tmp_path):
    images = _images(12)
    labels = _expected(images).mean(axis=(2, 3)).argmax(1)  # what the pooling "classifier" predicts
    np.savez(tmp_path / "d.npz", images=images, labels=labels, other=np.zeros(12))
    pre = Preprocess(scale=1 / 255, mean=MEAN, std=STD, layout="NHWC:NCHW")
    source = f"{tmp_path / 'd.npz'}:images"
    ranges = calibrate(model_from_text(POOL), source, method="minmax", progress=False, preprocess=pre)
    assert ranges.preprocess == pre.to_json() and ranges.samples == 12
    assert ranges["y"][1] == pytest.approx(float(_expected(images).mean(axis=(2, 3)).max()), rel=1e-5)
    assert parse_data(source + ":labels").labels == "labels" and has_labels(source + ":labels")
    result = compare_models(model_from_text(POOL), model_from_text(POOL), source + ":labels",
                            layers=False, preprocess=pre)
    assert result["accuracy"] == {"a": 1.0, "b": 1.0, "samples": 12, "top1_agreement": 1.0}
    # labels from another file
    np.save(tmp_path / "y.npy", (labels + 1) % 3)
    result = compare_models(model_from_text(POOL), model_from_text(POOL), source, layers=False,
                            label_key=str(tmp_path / "y.npy"), preprocess=pre)
    assert result["accuracy"]["a"] == 0.0


def test_cli_quantize_and_compare_take_array_data_with_preprocessing(tmp_path):
    images = _images(16)
    np.savez(tmp_path / "d.npz", images=images, labels=np.zeros(16, np.int64), classes=np.arange(3))
    model = save_text_model(POOL, tmp_path / "m.onnx")
    flags = ["--scale", "1/255", "--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--layout", "NHWC:NCHW"]
    refused = edgepack_cli("calibrate", model, "--data", f"{tmp_path / 'd.npz'}:images", "-o", tmp_path / "r.json",
                           "--layout", "NHWC:NCHW")
    assert_one_line_error(refused, "uint8", "--scale")
    compared = edgepack_cli("compare", model, model, "--data", f"{tmp_path / 'd.npz'}:images:labels", *flags,
                            "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["accuracy"]["samples"] == 16


def test_a_recipe_takes_array_data_and_preprocessing_keys(tmp_path):
    from edgepack.recipe import load_recipe, run_recipe

    np.savez(tmp_path / "d.npz", images=_images(8), labels=np.zeros(8, np.int64))
    save_text_model(POOL, tmp_path / "m.onnx")
    (tmp_path / "r.toml").write_text(
        'model = "m.onnx"\ntargets = ["x86-cpu"]\ndata = "d.npz:images"\n'
        '[[step]]\nrun = "calibrate"\nmethod = "minmax"\nscale = "1/255"\n'
        'mean = [0.485, 0.456, 0.406]\nstd = [0.229, 0.224, 0.225]\nlayout = "NHWC:NCHW"\n')
    (result,) = run_recipe(load_recipe(tmp_path / "r.toml"), tmp_path / "out")
    assert result.status == "done", result.note
    saved = json.loads(next((tmp_path / "out").rglob("calibrate.json")).read_text())
    assert saved["preprocess"]["mean"] == list(MEAN) and saved["samples"] == 8
