"""The .epk container: lossless round trip, codebook mode, corrupt and truncated files."""
import gzip

import numpy as np
import onnx_ir as ir
import pytest

from edgepack import io
from edgepack.errors import EdgepackError
from edgepack.pack.format import pack, read_header, unpack, unpack_model
from edgepack.passes.prune import PruneWeightsPass
from tests.compress.util import int8_weight_qdq, model_with_weights, randn
from tests.helpers import SHARED_MODELS, assert_one_line_error, check, edgepack_cli, requires_shared, run_ort

# x[N,64] -> Gemm w1[64,256] + b1 -> Relu -> MatMul w2[256,128] -> Relu -> Gemm w3[128,10] -> y
MLP = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 64] x, float[64, 256] w1, float[256] b1, float[256, 128] w2, float[128, 10] w3)
  => (float[N, 10] y) {
  h = Gemm(x, w1, b1)
  r = Relu(h)
  m = MatMul(r, w2)
  s = Relu(m)
  y = Gemm(s, w3)
}"""


def mlp(rng):
    return model_with_weights(MLP, {"w1": randn(rng, 64, 256), "b1": randn(rng, 256),
                                    "w2": randn(rng, 256, 128), "w3": randn(rng, 128, 10)})


def initializers(model):
    return {name: v.const_value.tobytes() for name, v in model.graph.initializers.items()}


def serialized(model):
    return ir.serde.serialize_model(model).SerializeToString()


@pytest.fixture
def sparse_model(tmp_path):
    rng = np.random.default_rng(0)
    model = mlp(rng)
    PruneWeightsPass(sparsity=0.9, include=["MatMul"])(model)  # one sparse tensor, the rest dense
    path = tmp_path / "mlp.onnx"
    io.save(model, path)
    return path


def test_lossless_round_trip_is_identical(sparse_model, tmp_path):
    report = pack(sparse_model, tmp_path / "m.epk")
    assert report["sparse_tensors"] == 1 and report["tensors"] == 4
    unpack(tmp_path / "m.epk", tmp_path / "back.onnx")
    original, back = io.load(sparse_model), io.load(tmp_path / "back.onnx")
    assert initializers(back) == initializers(original)
    assert serialized(back) == serialized(original)
    check(back)
    x = {"x": np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(back, x)[0], run_ort(original, x)[0])
    header, _ = read_header(tmp_path / "m.epk")
    assert header["mode"] == "lossless" and len(header["model_sha256"]) == 64
    assert header["versions"]["onnx"]


def test_negative_zeros_come_back_as_negative_zeros(tmp_path):
    """-0.0 == 0, so a sparse encoding by value dropped its sign bit (the bundled example's pruned
    weights hold -0.0 after BatchNorm folding) and unpack refused its own file."""
    from edgepack.resources import example_model

    out = tmp_path / "m.epk"
    pack(example_model(), out)
    unpack(out, tmp_path / "back.onnx")
    before = {t.name: t.const_value.numpy().tobytes() for t in io.load(example_model()).graph.initializers.values()}
    after = {t.name: t.const_value.numpy().tobytes() for t in io.load(tmp_path / "back.onnx").graph.initializers.values()}
    assert before == after


def test_external_data_is_packed_too(sparse_model, tmp_path):
    (tmp_path / "ext").mkdir()
    external = io.save(io.load(sparse_model), tmp_path / "ext" / "m.onnx", external_data=True)
    assert (tmp_path / "ext" / "m.onnx.data").exists()
    pack(external, tmp_path / "e.epk")
    unpack(tmp_path / "e.epk", tmp_path / "back.onnx")
    assert initializers(io.load(tmp_path / "back.onnx")) == initializers(io.load(sparse_model))


def test_codebook_shares_values_and_keeps_zeros(sparse_model, tmp_path):
    pack(sparse_model, tmp_path / "c.epk", codebook_bits=4)
    back, header = unpack_model(tmp_path / "c.epk")
    original = io.load(sparse_model)
    for name, value in original.graph.initializers.items():
        w, b = value.const_value.numpy(), back.graph.initializers[name].const_value.numpy()
        np.testing.assert_array_equal(w == 0, b == 0)
        if w.size > 16:
            assert np.unique(b[b != 0]).size <= 16
            assert np.abs(b - w).max() < (w.max() - w.min()) / 8
    check(back)
    x = {"x": np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)}
    ref, out = run_ort(original, x)[0], run_ort(back, x)[0]
    assert 0 < np.abs(out - ref).max() < 0.2 * np.abs(ref).max()


def test_pruned_int8_package_beats_gzip(tmp_path):
    rng = np.random.default_rng(3)
    model = mlp(rng)
    PruneWeightsPass(sparsity=0.9)(model)
    float_path = io.save(model, tmp_path / "f.onnx")
    int8_weight_qdq(model)
    check(model)
    path = io.save(model, tmp_path / "q.onnx")
    report = pack(path, tmp_path / "q.epk")
    raw = path.read_bytes()
    # 90% random sparsity + 7-bit values: ~4.7 bits of position and ~7 bits of value per weight
    # kept, so about 0.15 byte per int8 weight is the lossless limit (about 6.8x).
    assert report["packed_bytes"] * 4 <= len(raw)
    assert report["packed_bytes"] < len(gzip.compress(raw, 9))
    assert report["packed_bytes"] * 10 <= float_path.stat().st_size  # against the float32 model
    back, _ = unpack_model(tmp_path / "q.epk")
    assert initializers(back) == initializers(io.load(path))
    lossy = pack(path, tmp_path / "c.epk", codebook_bits=4)
    assert lossy["packed_bytes"] < report["packed_bytes"]
    back, _ = unpack_model(tmp_path / "c.epk")
    for name, value in back.graph.initializers.items():
        if value.dtype == ir.DataType.INT8:
            assert np.unique(value.const_value.numpy()).size <= 17  # 16 centroids + the zeros


def test_corrupt_truncated_and_foreign_files_are_refused(sparse_model, tmp_path):
    pack(sparse_model, tmp_path / "m.epk")
    blob = (tmp_path / "m.epk").read_bytes()
    (tmp_path / "flip.epk").write_bytes(blob[:-10] + bytes([blob[-10] ^ 1]) + blob[-9:])
    (tmp_path / "cut.epk").write_bytes(blob[: len(blob) // 2])
    (tmp_path / "short.epk").write_bytes(blob[:20])
    with pytest.raises(EdgepackError, match="checksum"):
        read_header(tmp_path / "flip.epk")
    with pytest.raises(EdgepackError, match="truncated"):
        read_header(tmp_path / "cut.epk")
    with pytest.raises(EdgepackError, match="truncated"):
        read_header(tmp_path / "short.epk")
    with pytest.raises(EdgepackError, match="not an edgepack package"):
        read_header(sparse_model)
    result = edgepack_cli("unpack", tmp_path / "flip.epk", "-o", tmp_path / "x.onnx")
    assert_one_line_error(result, "flip.epk", "checksum")
    assert not (tmp_path / "x.onnx").exists()


def test_cli_pack_unpack(sparse_model, tmp_path):
    result = edgepack_cli("pack", sparse_model, "-o", tmp_path / "m.epk", "--json", tmp_path / "p.json")
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads((tmp_path / "p.json").read_text())
    assert report["schema"] == "edgepack.pack/1" and report["packed_bytes"] == (tmp_path / "m.epk").stat().st_size
    result = edgepack_cli("unpack", tmp_path / "m.epk", "-o", tmp_path / "back.onnx")
    assert result.returncode == 0, result.stderr
    assert initializers(io.load(tmp_path / "back.onnx")) == initializers(io.load(sparse_model))


@requires_shared
def test_resnet20_lossless_and_codebook(tmp_path):
    src = SHARED_MODELS / "resnet20_cifar10.onnx"
    pack(src, tmp_path / "r.epk")
    back, _ = unpack_model(tmp_path / "r.epk")
    assert initializers(back) == initializers(io.load(src))
    report = pack(src, tmp_path / "c.epk", codebook_bits=6)
    assert report["ratio"] > 4
