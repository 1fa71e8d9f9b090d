"""A folder of images is data as it is: no manifest, sorted files, labels when the user has them,
the preprocessing flags, and the whole pipeline recorded where the model goes."""
from __future__ import annotations

import json

import numpy as np
import pytest

import edgepack
from edgepack.calib.data import InputSpec, has_labels, open_dataset
from edgepack.calib.preprocess import Preprocess
from edgepack.cli import main
from edgepack.errors import EdgepackError
from tests.helpers import save_text_model

SPEC = [InputSpec("x", ("N", 3, 4, 4), np.dtype(np.float32))]

# x [N,3,4,4] -> GlobalAveragePool -> Flatten -> y [N,3]: the class is the brightest channel
MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N,3,4,4] x) => (float[N,3] y) {
    p = GlobalAveragePool(x)
    y = Flatten(p)
}"""


def _photos(root, layout: dict[str, tuple[int, int, int]], size=(6, 8)):
    """Files (relative path -> RGB colour) as PNG and JPEG, `size` = (height, width)."""
    from PIL import Image

    for name, colour in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), colour, np.uint8)).save(path, quality=95)
    return root


def test_a_folder_of_images_without_manifest_is_data_sorted_with_image_defaults(tmp_path):
    folder = _photos(tmp_path / "photos", {"b.jpg": (0, 255, 0), "a.png": (255, 0, 0), "c.bmp": (0, 0, 255)})
    (folder / "README.txt").write_text("not an image")
    (batch,) = list(open_dataset(folder, SPEC, batch_size=8, preprocess=Preprocess(resize=4, crop=4)))
    x = batch["x"]
    assert x.shape == (3, 3, 4, 4) and x.dtype == np.float32  # NHWC -> NCHW, x/255 by default
    assert [int(x[i].mean(axis=(1, 2)).argmax()) for i in range(3)] == [0, 1, 2]  # a.png, b.jpg, c.bmp
    assert x.max() <= 1.0


def test_labels_come_from_class_folders_or_a_csv_and_compare_reports_accuracy(tmp_path):
    model = save_text_model(MODEL, tmp_path / "m.onnx")
    by_folder = _photos(tmp_path / "classes", {"0-red/x.png": (255, 0, 0), "1-green/y.png": (0, 255, 0),
                                               "2-blue/z.jpg": (0, 0, 250)})
    assert has_labels(str(by_folder))
    result = edgepack.compare(model, model, str(by_folder), resize=4, crop=4, no_layers=True)
    assert result.accuracy["samples"] == 3 and result.accuracy["a"] == 1.0

    flat = _photos(tmp_path / "flat", {"p.png": (255, 0, 0), "q.png": (0, 255, 0), "r.png": (0, 0, 255)})
    (flat / "labels.csv").write_text("file,label\nq.png,1\np.png,0\nr.png,1\n")  # r is mislabelled
    result = edgepack.compare(model, model, str(flat), resize=4, crop=4, no_layers=True)
    assert result.accuracy["a"] == pytest.approx(2 / 3)
    (tmp_path / "other.txt").write_text("0\n1\n2\n")  # one label per line, in file order
    result = edgepack.compare(model, model, str(flat), labels=str(tmp_path / "other.txt"), resize=4, crop=4,
                              no_layers=True)
    assert result.accuracy["a"] == 1.0
    (flat / "labels.csv").write_text("p.png,0\nq.png,1\n")
    with pytest.raises(EdgepackError, match="no label for r.png"):
        edgepack.compare(model, model, str(flat), resize=4, crop=4, no_layers=True)


def test_the_whole_pipeline_is_recorded_and_read_back_by_compare_and_build(tmp_path, capsys):
    """quantize records resize (with its interpolation), crop, scale, channel order, mean/std,
    layout; compare and build without flags use them and the target, and say so."""
    model = save_text_model(MODEL, tmp_path / "m.onnx")
    folder = _photos(tmp_path / "photos", {f"{i}.png": (40 * i, 200 - 30 * i, 90) for i in range(6)}, size=(9, 7))
    result = edgepack.quantize(str(model), str(folder), target="x86-cpu", resize=5, crop=4, scale=1,
                               mean=(104, 117, 123), channel_order="BGR", interpolation="bicubic",
                               output=tmp_path / "q.onnx")
    stored = json.loads(result.model.metadata_props["edgepack.preprocess"])
    assert stored == {"resize": 5, "interpolation": "bicubic", "crop": 4, "scale": 1.0, "channel_order": "BGR",
                      "mean": [104.0, 117.0, 123.0], "layout": "NHWC:NCHW"}
    assert result.ranges.preprocess == stored

    code = main(["compare", str(model), str(tmp_path / "q.onnx"), "--data", str(folder), "--no-layers",
                 "--json", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code == 0 and "target x86-cpu: as recorded in the model" in out
    assert "resize 5 (bicubic) -> crop 4 -> x*1 -> RGB->BGR" in out
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["from_model"] == {"target": "x86-cpu", "preprocess": stored}
    assert report["outputs"][0]["sqnr_db"] > 20  # the data was prepared as at calibration

    code = main(["build", str(tmp_path / "q.onnx"), "-o", str(tmp_path / "b.onnx"), "--data", str(folder)])
    assert code == 0 and "as recorded in the model" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "b.onnx.manifest.json").read_text())
    assert manifest["target"] == "x86-cpu" and manifest["preprocess"] == stored
    assert manifest["from_model"]["target"] == "x86-cpu"


def test_a_layout_given_the_wrong_way_round_is_named(tmp_path, capsys):
    model = save_text_model(MODEL, tmp_path / "m.onnx")
    folder = _photos(tmp_path / "photos", {"a.png": (1, 2, 3)}, size=(4, 4))
    code = main(["calibrate", str(model), "--data", str(folder), "-o", str(tmp_path / "r.json"),
                 "--layout", "NCHW:NHWC", "--mean", "0.5,0.5,0.5"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "--layout NCHW:NHWC says the data is NCHW" in err and "use --layout NHWC:NHWC" in err


def test_a_folder_with_neither_images_nor_manifest_says_what_it_takes(tmp_path, capsys):
    model = save_text_model(MODEL, tmp_path / "m.onnx")
    (tmp_path / "empty").mkdir()
    code = main(["calibrate", str(model), "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 1 and "neither image files" in err and "folder of images" in err


def test_the_report_shows_the_input_pipeline(tmp_path):
    """The run report's environment table names the pipeline a build manifest records."""
    from edgepack.report.html import RunData, _environment_section

    step = {"id": "build", "command": "build", "target": "x86-cpu"}
    data = RunData(tmp_path, {"model": "m.onnx", "targets": ["x86-cpu"]}, [step],
                   {("build", "x86-cpu"): {"preprocess": {"resize": 256, "crop": 224, "scale": 1 / 255,
                                                          "layout": "NHWC:NCHW"}}})
    page = _environment_section(data)
    assert "input pipeline" in page and "resize 256 (bilinear) -&gt; crop 224 -&gt; x*0.00392157" in page


def test_a_layout_the_wrong_way_round_on_arrays_names_the_layout():
    """NHWC arrays with --layout NCHW:NHWC: the layout is named, not `--mean has 3 values for 224
    channels`; the reverse mistake too."""
    nhwc = np.zeros((2, 224, 224, 3), np.uint8)
    with pytest.raises(EdgepackError, match="says the data is NCHW.*use --layout NHWC:NHWC"):
        Preprocess(layout="NCHW:NHWC", scale=1, mean=(1, 2, 3)).apply(nhwc)
    with pytest.raises(EdgepackError, match="says the data is NHWC.*use --layout NCHW:NCHW"):
        Preprocess(layout="NHWC:NCHW", scale=1).apply(nhwc.transpose(0, 3, 1, 2))
    assert Preprocess(layout="NHWC:NCHW", scale=1, mean=(1, 2, 3)).apply(nhwc).shape == (2, 3, 224, 224)
