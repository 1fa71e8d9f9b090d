"""load/save: round trips, external data, atomic writes, and every bad input's one-line error."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import edgepack
from edgepack import io
from edgepack.errors import EdgepackError
from tests.helpers import model_from_text, run_ort, save_text_model

# X[N,4] -> MatMul(W[4,3]) -> Add(b) -> Y
TINY = """
<ir_version: 8, opset_import: ["" : 17]>
tiny (float[N,4] X) => (float[N,3] Y)
<float[4,3] W = {1,2,3,4,5,6,7,8,9,10,11,12}, float[3] b = {0.5,-1,2}> {
    Z = MatMul(X, W)
    Y = Add(Z, b)
}
"""


def test_round_trip_keeps_outputs(tmp_path):
    src = save_text_model(TINY, tmp_path / "tiny.onnx")
    model = edgepack.load(src)
    out = edgepack.save(model, tmp_path / "copy.onnx")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(src, {"X": x})[0], run_ort(out, {"X": x})[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.onnx", "tiny.onnx"]  # no temp left


def test_external_data_round_trip(tmp_path):
    model = model_from_text(TINY)
    io.save(model, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").is_file()
    loaded = io.load(tmp_path / "ext.onnx")
    assert isinstance(loaded.graph.initializers["W"].const_value, ir.ExternalTensor)
    # A model that came with external data keeps it, in a data file of its own.
    (tmp_path / "out").mkdir()
    io.save(loaded, tmp_path / "out" / "again.onnx")
    assert (tmp_path / "out" / "again.onnx.data").is_file()
    x = np.ones((1, 4), np.float32)
    np.testing.assert_array_equal(
        run_ort(tmp_path / "out" / "again.onnx", {"X": x})[0], run_ort(model, {"X": x})[0]
    )


def test_save_refuses_to_overwrite_the_inputs_weights(tmp_path):
    model = model_from_text(TINY)
    io.save(model, tmp_path / "m.onnx", external_data=True)
    loaded = io.load(tmp_path / "m.onnx")
    with pytest.raises(EdgepackError, match="holds the input model's weights"):
        io.save(loaded, tmp_path / "m.onnx")


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch):
    model = model_from_text(TINY)
    (tmp_path / "out.onnx").write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ir, "save", broken)
    with pytest.raises(OSError):
        io.save(model, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]


def test_missing_and_directory(tmp_path):
    with pytest.raises(EdgepackError, match="not found"):
        io.load(tmp_path / "nope.onnx")
    with pytest.raises(EdgepackError, match="is a directory"):
        io.load(tmp_path)


def test_not_onnx_and_truncated(tmp_path):
    (tmp_path / "text.onnx").write_text("hello, this is not a model\n" * 10)
    with pytest.raises(EdgepackError, match="text.onnx"):
        io.load(tmp_path / "text.onnx")
    data = onnx.parser.parse_model(TINY).SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgepackError, match="cut.onnx"):
        io.load(tmp_path / "cut.onnx")


def test_checker_failure_names_the_file(tmp_path):
    proto = onnx.parser.parse_model(TINY)
    proto.graph.node[0].input[1] = "does_not_exist"
    onnx.save(proto, tmp_path / "bad.onnx")
    with pytest.raises(EdgepackError, match="bad.onnx: fails the ONNX checker"):
        io.load(tmp_path / "bad.onnx")
    assert io.load(tmp_path / "bad.onnx", check=False) is not None


def _point_weights_at(tmp_path, location: str):
    model = model_from_text(TINY)
    io.save(model, tmp_path / "m.onnx", external_data=True)
    proto = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for init in proto.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, tmp_path / "m.onnx")
    return tmp_path / "m.onnx"


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.data", "sub/../../secret.data"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    (tmp_path / "secret.data").write_bytes(b"\0" * 64)
    (tmp_path / "models").mkdir()
    path = _point_weights_at(tmp_path / "models", location)
    with pytest.raises(EdgepackError, match="outside the model's folder"):
        io.load(path)


def test_external_data_symlink_out_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    path = _point_weights_at(tmp_path / "models", "link.data")
    real = tmp_path / "models" / "m.onnx.data"
    os.replace(real, tmp_path / "elsewhere.data")
    os.symlink(tmp_path / "elsewhere.data", tmp_path / "models" / "link.data")
    with pytest.raises(EdgepackError, match="outside the model's folder"):
        io.load(path)


def test_missing_external_data_file(tmp_path):
    path = _point_weights_at(tmp_path, "gone.data")
    with pytest.raises(EdgepackError, match="gone.data.*missing"):
        io.load(path)


@pytest.mark.slow
def test_model_over_2gb_round_trips_with_external_data(tmp_path):
    """Weights of 2.25 GB, written straight to an external data file (never all in memory),
    loaded memory-mapped, saved again: the copy must use external data and hold the same bytes."""
    chunk = 2**28  # 256 MiB per initializer, 9 of them
    count = 9
    data_file = tmp_path / "big.onnx.data"
    with open(data_file, "wb") as handle:
        for i in range(count):
            handle.write(np.full(chunk // 4, i, dtype=np.float32).tobytes())
    graph_inits = []
    for i in range(count):
        t = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=[chunk // 4])
        t.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", data_file.name), ("offset", str(i * chunk)), ("length", str(chunk))):
            t.external_data.add(key=key, value=value)
        graph_inits.append(t)
    # Y = X + sum over i of ReduceSum(w_i): a scalar that depends on every weight.
    nodes, acc = [], "X"
    for i in range(count):
        nodes.append(onnx.helper.make_node("ReduceSum", [f"w{i}"], [f"s{i}"], keepdims=0))
        nodes.append(onnx.helper.make_node("Add", [acc, f"s{i}"], [f"a{i}"]))
        acc = f"a{i}"
    nodes.append(onnx.helper.make_node("Identity", [acc], ["Y"]))
    graph = onnx.helper.make_graph(
        nodes, "big", [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [1])], graph_inits,
    )
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.save(proto, tmp_path / "big.onnx")

    model = io.load(tmp_path / "big.onnx")
    assert io.weights_nbytes(model) > 2 * 10**9
    (tmp_path / "out").mkdir()
    out = io.save(model, tmp_path / "out" / "copy.onnx", external_data=None)
    assert (tmp_path / "out" / "copy.onnx.data").stat().st_size == count * chunk
    assert out.stat().st_size < 10_000  # the graph alone; weights are external
    copy = io.load(out)
    for i in (0, count - 1):
        w = copy.graph.initializers[f"w{i}"].const_value.numpy()
        assert w.shape == (chunk // 4,) and w[0] == i and w[-1] == i


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = io.write_atomic(tmp_path / "a.json", "{}")
    finally:
        os.umask(mask)
    assert path.read_text() == "{}" and (path.stat().st_mode & 0o777) == 0o644


def test_replaced_weights_are_freed_after_shape_inference():
    """onnx-ir's C-API bridge lists initializers as graph inputs for a moment; its input list kept
    them referenced forever. A weight dropped from the graph must free its memory."""
    import gc
    import tracemalloc

    model = model_from_text(TINY)
    big = model.graph.initializers["W"]
    tracemalloc.start()
    try:
        array = np.ones((1024, 1024, 8), np.float32)  # 32 MiB
        big.const_value = ir.tensor(array, name="W")
        del array
        io.infer_shapes(model)
        io.check_model(model)
        model.graph.initializers.pop("W")
        model.graph.node(0).replace_input_with(1, None)
        del big
        gc.collect()
        assert tracemalloc.get_traced_memory()[0] < 8 * 2**20
    finally:
        tracemalloc.stop()


def test_embedded_save_streams_large_weights_and_round_trips(tmp_path):
    """Weights over 1 MiB are written one tensor at a time after the graph (protobuf merges the
    pieces): onnx, onnx-ir and ONNX Runtime read one model with every weight, in order of use.

        X [N, 512] -> MatMul(W 512x1024, 2 MiB) -> Add(B) -> Y [N, 1024]
    """
    rng = np.random.default_rng(0)
    w = rng.standard_normal((512, 1024)).astype(np.float32)
    b = rng.standard_normal(1024).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["X", "W"], ["T"]), onnx.helper.make_node("Add", ["T", "B"], ["Y"])],
        "g", [onnx.helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["N", 512])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["N", 1024])],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    out = edgepack.save(edgepack.load(tmp_path / "m.onnx"), tmp_path / "copy.onnx")
    assert not (tmp_path / "copy.onnx.data").exists()
    onnx.checker.check_model(str(out), full_check=True)
    proto = onnx.load(out)
    assert sorted(t.name for t in proto.graph.initializer) == ["B", "W"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array([t for t in proto.graph.initializer if t.name == "W"][0]), w)
    x = rng.standard_normal((2, 512)).astype(np.float32)
    np.testing.assert_allclose(run_ort(out, {"X": x})[0], x @ w + b, rtol=1e-4, atol=1e-4)


def test_save_check_runs_on_staged_files_and_rebase_maps_the_written_weights(tmp_path):
    """`check` sees the staged model (a refusal publishes nothing); `rebase` leaves the model reading
    its weights from the written data file, memory-mapped, instead of holding them in memory."""
    model = edgepack.load(save_text_model(TINY, tmp_path / "tiny.onnx"))
    seen = []

    def refuse(staged):
        seen.append(staged)
        assert staged.is_file() and staged.parent != tmp_path
        raise EdgepackError("refused")

    with pytest.raises(EdgepackError):
        io.save(model, tmp_path / "out.onnx", external_data=True, check=refuse)
    assert seen and sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
    io.save(model, tmp_path / "out.onnx", external_data=True, check=lambda staged: None, rebase=True)
    tensors = [v.const_value for v in model.graph.initializers.values()]
    assert tensors and all(isinstance(t, ir.ExternalTensor) for t in tensors)
    assert {Path(t.path).resolve() for t in tensors} == {(tmp_path / "out.onnx.data").resolve()}
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    from edgepack.runtime import run_and_free  # from memory, its external data from its own folder

    np.testing.assert_allclose(run_and_free(model, {"X": x})[0], run_ort(tmp_path / "tiny.onnx", {"X": x})[0])
