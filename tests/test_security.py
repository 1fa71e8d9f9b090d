"""Untrusted files: every hole of issue #12 has a crafted file here that once got through.

1. unpack copying any file into the output model (external data in a package's graph)
2. external data checked in the model's folder but read from the working folder
3. decompression bombs in unpack
4. recipes writing outside the output folder, target names reaching outside targets/
5. external data hidden in attributes (ConstantOfShape, TENSORS, subgraphs at any depth)
and the data-loss checks: no output may be an input (same file, link, external data file),
output folders are created, temporary files of killed runs are cleaned up.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepack import io, outputs
from edgepack.cli import main
from edgepack.errors import EdgepackError
from edgepack.pack import format as epk
from edgepack.targets import target_dir
from tests.helpers import REPO, run_ort

SECRET = b"TOP-SECRET-0123456789abcdef" * 4  # 108 bytes that must never reach an output


def cli(capsys, *args) -> tuple[int, str]:
    """The CLI in this process (fast): exit code and stderr."""
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def external(tensor: TensorProto, location: str, length: int, offset: int = 0) -> TensorProto:
    """Turn `tensor` into one that reads `length` bytes of `location` (and holds none itself)."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def matmul_model(weight: TensorProto) -> onnx.ModelProto:
    #   x[1,16] -> MatMul(W[16,16]) -> y
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32)


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "secret.bin"
    path.write_bytes(SECRET)
    return path


def holds_secret(folder: Path) -> bool:
    return any(SECRET[:16] in p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "secret.bin")


# ------------------------------------------------------------------ 1. packages carry no external data

def craft_epk(path: Path, graph: bytes, table: list | None = None, streams: dict | None = None,
              declared: dict | None = None) -> Path:
    """An .epk built by hand. A stream is bytes (stored raw) or (codec, compressed bytes, raw
    length); `declared` overrides raw lengths."""
    raw = dict.fromkeys(epk.STREAMS, b"")
    raw.update({"graph": graph, "table": json.dumps(table or []).encode(), **(streams or {})})
    payload, entries = b"", []
    for name in epk.STREAMS:
        codec, data, size = raw[name] if isinstance(raw[name], tuple) else ("raw", raw[name], len(raw[name]))
        entries.append({"name": name, "codec": codec, "offset": len(payload), "length": len(data),
                        "raw_length": (declared or {}).get(name, size)})
        payload += data
    header = {"format": epk.FORMAT, "mode": "lossless", "codebook_bits": None, "versions": {},
              "source": "m.onnx", "model_sha256": "0" * 64, "weights_sha256": hashlib.sha256().hexdigest(),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "payload_bytes": len(payload),
              "streams": entries}
    blob = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(epk._PREFIX.pack(epk.MAGIC, epk.VERSION, len(blob)) + blob + payload)
    return path


@pytest.mark.parametrize("where", ["absolute", "parent", "working folder", "Constant in a subgraph"])
def test_unpack_never_reads_files_named_in_the_package(tmp_path, secret, where, capsys, monkeypatch):
    w = numpy_helper.from_array(np.zeros((3, 9), np.float32), "W")  # 108 bytes, as SECRET
    location = {"absolute": str(secret), "parent": "../secret.bin", "working folder": "secret.bin",
                "Constant in a subgraph": "../secret.bin"}[where]
    model = matmul_model(numpy_helper.from_array(weights(), "W"))
    if where == "Constant in a subgraph":
        # cond -> If(then: Constant(value=external), else: Constant) -> z, beside x -> MatMul -> y
        branch = lambda name, t: helper.make_graph(  # noqa: E731
            [helper.make_node("Constant", [], [name], value=t)], name, [],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3, 9])])
        model.graph.node.append(helper.make_node(
            "If", ["cond"], ["z"], then_branch=branch("a", external(w, location, len(SECRET))),
            else_branch=branch("b", numpy_helper.from_array(np.ones((3, 9), np.float32)))))
        model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 9]))
    else:
        model.graph.initializer.append(external(w, location, len(SECRET)))
        model.graph.input.append(helper.make_tensor_value_info("W2", TensorProto.FLOAT, [3, 9]))
    package = craft_epk(tmp_path / "pkg" / "p.epk", model.SerializeToString())
    monkeypatch.chdir(tmp_path)  # where "secret.bin" (relative) would be read from
    code, err = cli(capsys, "unpack", package, "-o", tmp_path / "out" / "m.onnx")
    assert_refused(code, err, "points at external file", "refused")
    assert not (tmp_path / "out" / "m.onnx").exists() and not holds_secret(tmp_path)


# ------------------------------------------------------------------ 3. decompression bombs

def zeros_compressed(codec: str, size: int) -> bytes:
    chunk = bytes(min(size, 16 << 20))
    if codec == "zstd":
        import zstandard
        comp = zstandard.ZstdCompressor(level=1).compressobj(size=size)  # the size in the frame, as zstd writes it
    else:
        comp = zlib.compressobj(9) if codec == "zlib" else lzma.LZMACompressor(preset=1)
    return b"".join(comp.compress(chunk) for _ in range(size // len(chunk))) + comp.flush()


@pytest.mark.parametrize("codec", ["zlib", "xz", "zstd"])
def test_a_stream_expanding_past_its_declared_size_is_refused(tmp_path, codec, capsys):
    pytest.importorskip("zstandard") if codec == "zstd" else None
    bomb = zeros_compressed(codec, 16 << 20)  # 16 MiB of zeros, declared as 1,000 bytes
    package = craft_epk(tmp_path / "b.epk", b"", streams={"graph": (codec, bomb, 1000)})
    code, err = cli(capsys, "unpack", package, "-o", tmp_path / "m.onnx")
    assert_refused(code, err, "stream 'graph'", "more than the 1,000 bytes")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_a_gigabyte_bomb_is_refused_without_allocating_it(tmp_path):
    pytest.importorskip("zstandard")
    bomb = zeros_compressed("zstd", 1 << 30)  # 1 GiB of zeros in ~32 KB
    package = craft_epk(tmp_path / "b.epk", b"", streams={"graph": ("zstd", bomb, 4096)})
    # VmHWM: this process's peak RSS (ru_maxrss would carry the forking parent's over exec)
    script = ("import sys; from edgepack.cli import main; code = main(sys.argv[1:]); "
              "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))); "
              "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, "unpack", str(package), "-o", str(tmp_path / "m.onnx")],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1 and "decompression bomb" in result.stderr, result.stderr
    peak_mib = int(result.stdout.split()[-1]) / 1024  # in KiB
    assert peak_mib < 512, peak_mib  # the bomb is 1024 MiB: it was never expanded


@pytest.mark.parametrize("case", ["declared stream size", "sparse entry size", "size against the shape"])
def test_declared_sizes_are_bounded_before_allocating(tmp_path, case, capsys):
    graph = matmul_model(onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[16, 16]))
    entry = {"position": 0, "name": "W", "data_type": 1, "shape": [16, 16], "bytes": 1024, "itemsize": 4,
             "encoding": "sparse", "nnz": 1, "deltas": [0, 1], "values": [0, 4]}
    streams = {"deltas": b"\x01", "values": b"\0\0\x80\x3f"}
    declared = None
    if case == "declared stream size":
        declared, needle = {"dense": 10**12}, "declares 1,000,000,000,000 bytes unpacked"
    elif case == "sparse entry size":  # once: np.zeros(10**12) -> internal error, MemoryError
        entry.update(shape=[250_000_000_000], bytes=10**12)
        graph.graph.initializer[0].dims[:] = [250_000_000_000]
        needle = "declare over"
    else:
        entry.update(bytes=4096)
        needle = "4096 bytes for shape [16, 16]"
    package = craft_epk(tmp_path / "s.epk", graph.SerializeToString(), table=[entry], streams=streams,
                        declared=declared)
    code, err = cli(capsys, "unpack", package, "-o", tmp_path / "m.onnx")
    assert_refused(code, err, needle)
    assert not (tmp_path / "m.onnx").exists()


def test_a_genuine_package_still_unpacks(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(matmul_model(numpy_helper.from_array(weights(), "W")), model)
    assert cli(capsys, "pack", model, "-o", tmp_path / "m.epk")[0] == 0
    assert cli(capsys, "unpack", tmp_path / "m.epk", "-o", tmp_path / "back.onnx")[0] == 0
    back = onnx.load(tmp_path / "back.onnx")
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]), weights())


# ------------------------------------------------------------------ 2. external data read from the model's folder

@pytest.fixture
def decoy(tmp_path, monkeypatch) -> Path:
    """m/model.onnx reading m/w.bin, run from other/ which holds another w.bin (all 7s)."""
    (tmp_path / "m").mkdir()
    (tmp_path / "other").mkdir()
    onnx.save(matmul_model(numpy_helper.from_array(weights(), "W")), tmp_path / "m" / "model.onnx",
              save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "other" / "w.bin").write_bytes(np.full((16, 16), 7, np.float32).tobytes())
    monkeypatch.chdir(tmp_path / "other")
    return tmp_path / "m" / "model.onnx"


@pytest.mark.parametrize("argv", [["prune", "{m}", "-o", "{o}", "--sparsity", "0.5"],
                                  ["compress", "clip", "{m}", "-o", "{o}", "--threshold", "1e9"],
                                  ["compress", "lowrank", "{m}", "-o", "{o}", "--rank", "full"]])
def test_commands_read_external_data_beside_the_model(decoy, tmp_path, argv, capsys):
    out = tmp_path / "out" / "o.onnx"
    code, err = cli(capsys, *[a.format(m=decoy, o=out) for a in argv])
    assert code == 0, err
    kept = np.concatenate([numpy_helper.to_array(t, base_dir=str(out.parent)).ravel()
                           for t in onnx.load(out, load_external_data=False).graph.initializer])
    assert not np.any(kept == 7.0)  # nothing of other/w.bin
    if argv[0] == "compress":
        x = {"x": np.ones((1, 16), np.float32)}
        np.testing.assert_allclose(run_ort(out, x)[0], x["x"] @ weights(), rtol=1e-4, atol=1e-4)


def test_copies_and_sessions_keep_reading_the_models_folder(decoy):
    from edgepack import runtime
    from edgepack.graph import copy_model

    model = io.load(decoy)
    copy = copy_model(model)
    np.testing.assert_array_equal(copy.graph.initializers["W"].const_value.numpy(), weights())
    x = {"x": np.ones((1, 16), np.float32)}
    np.testing.assert_allclose(runtime.session(copy).run(None, x)[0], x["x"] @ weights(), rtol=1e-5)


# ------------------------------------------------------------------ 5. the guard covers every tensor

def constant_of_shape_model(location: str) -> onnx.ModelProto:
    #   shape[2] -> ConstantOfShape(value = external) -> y
    value = external(numpy_helper.from_array(np.zeros(1, np.float32), "v"), location, 4)
    graph = helper.make_graph([helper.make_node("ConstantOfShape", ["s"], ["y"], value=value)], "g",
                              [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def nested(node: onnx.NodeProto, depth: int) -> onnx.ModelProto:
    """`node` inside `depth` levels of If branches."""
    out = node.output[0]
    for level in range(depth):
        body = helper.make_graph([node], f"b{level}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
        empty = helper.make_graph([helper.make_node("Constant", [], [out], value_float=0.0)], f"e{level}", [],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
        node = helper.make_node("If", ["c"], [out], then_branch=body, else_branch=empty)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("x", 1)])


@pytest.mark.parametrize("case", ["ConstantOfShape", "TENSORS attribute", "subgraph depth 3", "absolute"])
def test_external_data_in_any_attribute_is_guarded(tmp_path, secret, case, capsys):
    (tmp_path / "m").mkdir()
    tensor = lambda loc: external(numpy_helper.from_array(np.zeros(1, np.float32), "v"), loc, 4)  # noqa: E731
    if case in ("ConstantOfShape", "absolute"):
        model = constant_of_shape_model("../secret.bin" if case == "ConstantOfShape" else str(secret))
    elif case == "TENSORS attribute":
        node = helper.make_node("Custom", [], ["y"], domain="x")
        node.attribute.append(helper.make_attribute("ts", [tensor("../secret.bin")]))
        model = nested(node, 0)
    else:
        model = nested(helper.make_node("Constant", [], ["y"], value=tensor("../secret.bin")), 3)
    path = tmp_path / "m" / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(EdgepackError, match="outside the model's folder"):
        io.load(path, check=False)
    assert_refused(*cli(capsys, "inspect", path, "--no-check"), "outside the model's folder")


@pytest.mark.parametrize("case", ["hard link", "past the end"])
def test_external_data_files_must_be_plain_and_large_enough(tmp_path, secret, case):
    (tmp_path / "m").mkdir()
    if case == "hard link":  # a link brings any file into the model's folder
        os.link(secret, tmp_path / "m" / "w.bin")
        location, length, offset, needle = "w.bin", 4, 0, "hard links"
    else:
        (tmp_path / "m" / "w.bin").write_bytes(b"\0" * 8)
        location, length, offset, needle = "w.bin", 4, 6, "do not fit|reads bytes 6..10"
    onnx.save(constant_of_shape_model(location), tmp_path / "m" / "model.onnx")
    model = onnx.load(tmp_path / "m" / "model.onnx", load_external_data=False)
    model.graph.node[0].attribute[0].t.external_data[1].value = str(offset)
    onnx.save(model, tmp_path / "m" / "model.onnx")
    with pytest.raises(EdgepackError, match=needle):
        io.load(tmp_path / "m" / "model.onnx", check=False)


# ------------------------------------------------------------------ 4. recipes stay in their folders

MODEL = REPO / "edgepack" / "examples" / "digits_cnn.onnx"


def recipe(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "m.onnx").write_bytes(MODEL.read_bytes())
    path = folder / "r.toml"
    path.write_text('model = "m.onnx"\ndata = "${calibration}/digits/calib.npz"\n' + text)
    return path


@pytest.mark.parametrize("text, needle", [
    ('targets = ["../../x/evil"]\n[[step]]\nrun = "build"\n', "neither a target name nor a .toml file"),
    ('targets = ["..\\\\x"]\n[[step]]\nrun = "build"\n', "neither a target name nor a .toml file"),
    ('targets = ["../x86.toml"]\n[[step]]\nrun = "build"\n', "outside the recipe's folder"),
    ('[[step]]\nrun = "quantize"\ntarget = "../x86.toml"\n', "outside the recipe's folder"),
    ('[[step]]\nrun = "calibrate"\ntensorrt_cache = "{victim}"\n', "writes outside the output folder"),
    ('targets = ["x86-cpu"]\n[[step]]\nrun = "profile"\nhistory_db = "../../x.sqlite"\n',
     "writes outside the output folder"),
    ('targets = ["x86-cpu"]\n[[step]]\nrun = "build"\ntiming_cache = "../../../t.cache"\n', "writes outside"),
])
def test_recipes_write_only_under_the_output_folder(tmp_path, text, needle, capsys):
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / "x86.toml").write_bytes((target_dir() / "x86-cpu.toml").read_bytes())
    path = recipe(tmp_path / "a" / "b", text.replace("{victim}", str(victim)))
    before = sorted(p for p in tmp_path.rglob("*"))
    assert_refused(*cli(capsys, "run", path, "-o", tmp_path / "a" / "b" / "out"), needle)
    assert victim.read_bytes() == b"keep me"
    assert sorted(p for p in tmp_path.rglob("*") if "out" not in p.parts) == before


def test_recipe_outputs_resolve_in_the_output_folder_unless_allowed_outside(tmp_path, capsys):
    victim = tmp_path / "victim.cache"
    path = recipe(tmp_path / "r", '[[step]]\nrun = "calibrate"\ntensorrt_cache = "calib.cache"\n'
                                  f'[[step]]\nid = "c2"\nrun = "calibrate"\ninput = "model"\n'
                                  f'tensorrt_cache = "{victim}"\n')
    assert_refused(*cli(capsys, "run", path, "-o", tmp_path / "out"), "writes outside")
    code, err = cli(capsys, "run", path, "-o", tmp_path / "out", "--allow-outside")
    assert code == 0, err
    assert (tmp_path / "out" / "calib.cache").is_file() and victim.is_file()


def test_target_names_cannot_reach_outside_targets(tmp_path):
    from edgepack.targets import load_target

    (tmp_path / "evil.toml").write_bytes((target_dir() / "x86-cpu.toml").read_bytes())
    relative = os.path.relpath(tmp_path / "evil", target_dir())
    with pytest.raises(EdgepackError, match="neither a target name"):
        load_target(relative)
    assert load_target(tmp_path / "evil.toml").name == "x86-cpu"  # a .toml path, as the CLI allows


# ------------------------------------------------------------------ issue #23: a fleet device is untrusted
# (the same rules on a real local Ray cluster, with a hostile device: tests/fleet/test_fleet_hostile.py;
#  the authenticated, loopback-only head and device: tests/fleet/test_fleet_auth.py)

def _reply(files: dict, **node) -> dict:
    record = {"node_id": "ab" * 28, "hostname": "dev", "ip": "127.0.0.1", "versions": {"edgepack": "0"},
              "device": {"machine": "x86_64"}, **node}
    return {"node": record, "workdir": "/tmp/w",
            "steps": [{"id": "build", "status": "done", "seconds": 1.0, "note": "", "log": "", "files": files}]}


DECLARED = {"build": {"build.onnx", "build.onnx.data", "build.json", "build.log"}}


@pytest.mark.parametrize("name", ["../../x", "/etc/cron.d/x", "..", ".", "a/b", "a\\b", ".hidden", "x\x00y",
                                  "x\x1b[2J", "build.step.json", "other.onnx", "x" * 256, 7, ""])
def test_a_device_reply_names_only_plain_declared_files(name):
    from edgepack.fleet.untrusted import HostileReply, check_reply

    with pytest.raises(HostileReply, match="reply was refused"):
        check_reply(_reply({"build.log": b"ok", name: b"pwned"}), DECLARED)
    assert check_reply(_reply({"build.log": b"ok"}), DECLARED)["steps"][0]["files"] == {"build.log": b"ok"}


@pytest.mark.parametrize("case", ["not a dict", "unknown step", "step twice", "bad status", "nan seconds",
                                  "bytes as str", "node id", "deep device record", "huge note", "too big"])
def test_a_device_reply_is_validated_whole(case, monkeypatch):
    from edgepack.fleet import untrusted

    reply = _reply({"build.log": b"ok"})
    step = reply["steps"][0]
    if case == "not a dict":
        reply = ["steps"]
    elif case == "unknown step":
        step["id"] = "evil"
    elif case == "step twice":
        reply["steps"].append(dict(step))
    elif case == "bad status":
        step["status"] = "done; rm -rf"
    elif case == "nan seconds":
        step["seconds"] = float("nan")
    elif case == "bytes as str":
        step["files"] = {"build.log": "text"}
    elif case == "node id":
        reply["node"]["node_id"] = "../x"
    elif case == "deep device record":
        deep: dict = {}
        for _ in range(50):
            deep = {"x": deep}
        reply["node"]["device"] = deep
    elif case == "huge note":
        step["note"] = "x" * (untrusted.MAX_NOTE + 1)
    else:
        monkeypatch.setattr(untrusted, "MAX_REPLY_BYTES", 4)
        step["files"] = {"build.log": b"12", "build.json": b"345"}
    with pytest.raises(untrusted.HostileReply):
        untrusted.check_reply(reply, DECLARED)


def test_device_strings_lose_their_control_characters():
    from edgepack.fleet.untrusted import check_reply

    clean = check_reply(_reply({}, hostname="dev\x1b]0;owned\x07\r"), DECLARED)
    assert clean["node"]["hostname"] == "dev?]0;owned??"


def test_returned_files_never_follow_a_link(tmp_path):
    from edgepack.fleet.untrusted import write_under

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    run = tmp_path / "run"
    run.mkdir()
    (run / "x86-cpu").symlink_to(outside)
    with pytest.raises(EdgepackError, match="symbolic link is not followed"):
        write_under(run, ("x86-cpu",), "build.log", b"pwned")
    (run / "x86-cpu").unlink()
    (run / "x86-cpu").mkdir()
    (run / "x86-cpu" / "build.log").symlink_to(outside / "victim")
    write_under(run, ("x86-cpu",), "build.log", b"new")
    assert (outside / "victim").read_text() == "keep" and (run / "x86-cpu" / "build.log").read_bytes() == b"new"
    (tmp_path / "linked-run").symlink_to(run)
    with pytest.raises(EdgepackError, match="symbolic link is not followed"):
        write_under(tmp_path / "linked-run", ("x86-cpu",), "build.log", b"pwned")
    assert [p.name for p in outside.iterdir()] == ["victim"]


def test_the_fleet_token_is_owner_only(tmp_path):
    import stat

    from edgepack.fleet import auth

    path = auth.ensure_token(tmp_path / "conf" / "fleet.token")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    first = auth.read_token(path)
    assert auth.ensure_token(path) == path and auth.read_token(path) == first  # kept
    auth.ensure_token(path, rotate=True)
    assert auth.read_token(path) != first and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(EdgepackError, match="readable by others"):
        auth.read_token(path)
    env = auth.ray_env(path, {"RAY_AUTH_TOKEN": "leak"})
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(path.resolve())
    assert "RAY_AUTH_TOKEN" not in env


def test_a_head_binds_loopback_unless_told_and_warns_on_a_lan_address(tmp_path, caplog):
    from edgepack.errors import UsageError
    from edgepack.fleet.head import start_head

    local = start_head(token_file=tmp_path / "t", dry_run=True)  # dry: nothing started, no traffic
    assert local.command[local.command.index("--node-ip-address") + 1] == "127.0.0.1" and not local.warnings
    assert "edgepack.fleet.raystart" in local.command and "--include-dashboard=false" in local.command
    lan = start_head("192.0.2.10", token_file=tmp_path / "t", dry_run=True)
    assert "every interface" in lan.warnings[0] and "firewall" in lan.warnings[0]
    for bad in ("0.0.0.0", "::", "example.com"):
        with pytest.raises(UsageError):
            start_head(bad, token_file=tmp_path / "t", dry_run=True)


def test_the_driver_starts_ray_from_an_empty_folder(tmp_path, monkeypatch):
    """Ray puts the driver's working folder first on the devices' sys.path: a folder called
    `edgepack` there must not replace the installed package, so ray.init runs from an empty one."""
    ray = pytest.importorskip("ray")
    from edgepack.fleet import cluster

    (tmp_path / "edgepack").mkdir()
    (tmp_path / "edgepack" / "__init__.py").write_text("raise ImportError('the wrong edgepack')\n")
    monkeypatch.chdir(tmp_path)
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(cwd=os.getcwd(), listing=os.listdir(".")))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(cluster, "_authenticate", lambda address: None)
    with cluster.connect("127.0.0.1:1"):
        assert os.getcwd() == str(tmp_path)
    assert seen["cwd"] != str(tmp_path) and seen["listing"] == []


# ------------------------------------------------------------------ issue #23: one error line, bounded work

def _one_error(code: int, err: str, needle: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert code in (1, 2) and len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    assert needle in lines[0], lines[0]


# 1000-deep: tomllib's RecursionError ("nested too deeply"), or, where another test raised the
# recursion limit, the walker's "values nested 17 levels deep": one error line either way
@pytest.mark.parametrize("case, needle", [("nested", "nested"), ("long id", "5000 characters long"),
                                          ("deep but parseable", "nested 17 levels deep")])
def test_hostile_recipes_are_one_error_line(tmp_path, case, needle, capsys):
    if case == "nested":
        body = "x = " + "[" * 1000 + "]" * 1000 + "\n"
    elif case == "long id":
        body = '[[step]]\nrun = "optimize"\nid = "' + "a" * 5000 + '"\n'
    else:
        body = "x = " + "[" * 20 + "]" * 20 + "\n"
    path = recipe(tmp_path, body)
    _one_error(*cli(capsys, "run", path, "-o", tmp_path / "out"), needle)


@pytest.mark.parametrize("argv, needle", [
    (["--runs", "1000000000000"], "--runs 1,000,000,000,000: out of range"),
    (["--duration", "100000000s"], "longer than the 86400 s allowed"),
    (["--warmup", "1000000000000000000000000000000"], "--warmup"),
    (["--layer-runs", "1000000000000"], "--layer-runs"),
    (["--batch", "1000000000"], "--batch 1,000,000,000: out of range"),
    (["--batch", "0"], "out of range"),
])
def test_profile_counts_and_durations_are_bounded(tmp_path, argv, needle, capsys):
    _one_error(*cli(capsys, "profile", MODEL, "-t", "x86-cpu", "--no-history", *argv), needle)


@pytest.mark.parametrize("option, value", [("runs", "1000000000000"), ("warmup", '"99999999s"'),
                                           ("duration", '"1000000000000ms"'), ("layer-runs", "1000000000000")])
def test_recipe_profile_options_are_bounded(tmp_path, option, value, capsys):
    path = recipe(tmp_path, f'targets = ["x86-cpu"]\n[[step]]\nrun = "profile"\nno-history = true\n{option} = {value}\n')
    code, err = cli(capsys, "run", path, "-o", tmp_path / "out")
    assert code == 1 and "out of range" in err or "allowed" in err, err
    assert "Traceback" not in err and "internal error" not in err


def test_a_batch_too_big_for_this_machine_is_refused_before_allocating(tmp_path, capsys, monkeypatch):
    from edgepack import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 64 * 2**20)  # a 64 MiB machine
    start = time.perf_counter()
    _one_error(*cli(capsys, "profile", MODEL, "-t", "x86-cpu", "--no-history", "--batch", "100000"),
               "more than the 0.1 GiB of memory available")
    assert time.perf_counter() - start < 30  # refused before any input was drawn or run


# ------------------------------------------------------------------ issue #23: `report` on a hostile run folder

def _run_folder(folder: Path, run: dict, reports: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(run) if not isinstance(run, str) else run)
    for name, text in (reports or {}).items():
        (folder / name).write_text(text)
    return folder


STEP = {"id": "profile", "command": "profile", "target": "x86-cpu", "status": "done", "inputs": ["model"],
        "report": "profile.json", "artifact": None}


@pytest.mark.parametrize("case", ["baseline outside", "report link outside", "absolute report", "cycle",
                                  "deep json", "bad json", "wrong types", "report not a record",
                                  "steps not a list", "run.json a list"])
def test_report_reads_only_the_run_folder_and_checks_each_file(tmp_path, secret, case, capsys, monkeypatch):
    import io as stdio

    opened = []
    real_open = stdio.open

    def spy(file, *args, **kwargs):  # pathlib reads through io.open
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    run = {"schema": "edgepack.run/1", "model": "m.onnx", "targets": ["x86-cpu"], "steps": [dict(STEP)]}
    reports = {"profile.json": json.dumps({"schema": "edgepack.profile/1", "latency_ms": {"p50": 1.0}})}
    folder = tmp_path / "run"
    if case == "baseline outside":
        run["baseline"] = str(secret)
    elif case == "report link outside":
        folder.mkdir()
        (folder / "profile.json").symlink_to(secret)
        reports = {}
    elif case == "absolute report":
        run["steps"][0]["report"] = str(secret)
        reports = {}
    elif case == "cycle":
        run["steps"] = [dict(STEP, id="a", inputs=["b"]), dict(STEP, id="b", inputs=["a"])]
    elif case == "deep json":
        reports = {"profile.json": "[" * 100000 + "]" * 100000}
    elif case == "bad json":
        run = '{"steps": [}'
    elif case == "wrong types":
        reports = {"profile.json": json.dumps({"latency_ms": "fast", "environment": 5, "layers": {"x": 1}})}
    elif case == "report not a record":
        reports = {"profile.json": "[1, 2]"}
    elif case == "steps not a list":
        run["steps"] = {"id": "x"}
    else:
        run = "[]"
    _run_folder(folder, run, reports)
    monkeypatch.setattr(stdio, "open", spy)
    code, err = cli(capsys, "report", folder, "-o", tmp_path / "r.html")
    monkeypatch.setattr(stdio, "open", real_open)
    assert any(p.endswith("run.json") for p in opened)  # the spy sees the reads
    assert str(secret) not in opened and not any(os.path.realpath(p) == str(secret) for p in opened), opened
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 0:
        page = (tmp_path / "r.html").read_text()
        assert SECRET.decode()[:16] not in page
    else:
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
        assert not (tmp_path / "r.html").exists()


def test_fp16_overflow_is_reported_not_an_internal_error(tmp_path, capsys):
    """Weights that fit float32 but whose products pass 65504 overflow in the float16 model: the
    cost report says so (inf/nan outputs, no SQNR) instead of `math domain error`."""
    model = onnx.load(str(MODEL))
    weight = model.graph.initializer[0]
    big = np.full(numpy_helper.to_array(weight).shape, 1e5, np.float32)
    weight.CopyFrom(numpy_helper.from_array(big, weight.name))
    onnx.save(model, str(tmp_path / "big.onnx"))
    code = main(["compress", "fp16", str(tmp_path / "big.onnx"), "-o", str(tmp_path / "out.onnx")])
    captured = capsys.readouterr()
    assert code == 0 and "internal error" not in captured.err, captured.err
    assert "inf/nan where the original's are finite" in captured.out + captured.err
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


# ------------------------------------------------------------------ data loss: no output is an input

@pytest.fixture
def ext_model(tmp_path) -> Path:
    (tmp_path / "m").mkdir()
    path = tmp_path / "m" / "model.onnx"
    onnx.save(matmul_model(numpy_helper.from_array(weights(), "W")), path,
              save_as_external_data=True, location="w.bin", size_threshold=0)
    return path


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("argv", [
    ["prune", "{m}", "-o", "{m}", "--sparsity", "0.5"],
    ["compress", "fp16", "{m}", "-o", "{m}"],
    ["compress", "clip", "{m}", "-o", "{w}", "--threshold", "1"],
    ["optimize", "{m}", "-o", "{hard}"],
    ["optimize", "{m}", "-o", "{sym}"],
    ["quantize", "{m}", "-t", "x86-cpu", "--data", "{d}", "-o", "{m}"],
    ["calibrate", "{m}", "--data", "{d}", "-o", "{m}"],
    ["calibrate", "{m}", "--data", "{d}", "-o", "{d}"],
    ["pack", "{m}", "-o", "{m}"],
    ["inspect", "{m}", "--json", "{m}"],
    ["inspect", "{m}", "--json", "{w}"],
    ["build", "{m}", "-t", "x86-cpu", "-o", "{m}"],
    ["profile", "{m}", "-t", "x86-cpu", "--runs", "10", "--no-history", "--json", "{m}"],
])
def test_no_output_may_be_an_input(ext_model, tmp_path, argv, capsys):
    folder = ext_model.parent
    np.savez(folder / "d.npz", x=np.ones((2, 1, 16), np.float32))
    os.symlink(ext_model, folder / "sym.onnx")
    names = {"m": ext_model, "w": folder / "w.bin", "d": folder / "d.npz", "sym": folder / "sym.onnx",
             "hard": folder / "hard.onnx"}
    os.link(ext_model, names["hard"])
    before = snapshot(folder)
    code, err = cli(capsys, *[a.format(**names) if a.startswith("{") else a for a in argv])
    assert_refused(code, err, "never overwrites an input")
    assert snapshot(folder) == before


def test_two_outputs_naming_one_file_are_refused(ext_model, tmp_path, capsys):
    out = tmp_path / "new" / "o.onnx"
    code, err = cli(capsys, "prune", ext_model, "-o", out, "--json", out.parent / ".." / "new" / "o.onnx",
                    "--sparsity", "0.5")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "name the same file" in lines[0], err
    assert not out.exists()


def test_unpack_onto_its_package_is_refused(tmp_path, capsys):
    onnx.save(matmul_model(numpy_helper.from_array(weights(), "W")), tmp_path / "m.onnx")
    assert cli(capsys, "pack", tmp_path / "m.onnx", "-o", tmp_path / "p.epk")[0] == 0
    blob = (tmp_path / "p.epk").read_bytes()
    assert_refused(*cli(capsys, "unpack", tmp_path / "p.epk", "-o", tmp_path / "p.epk"), "never overwrites")
    assert (tmp_path / "p.epk").read_bytes() == blob


def test_build_of_an_external_data_model_into_another_folder(ext_model, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "new" / "folder" / "b.onnx"  # missing folders are created
    code, err = cli(capsys, "build", ext_model, "-t", "x86-cpu", "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.parent.iterdir()) == ["b.onnx", "b.onnx.data", "b.onnx.manifest.json", "b.ort"]
    x = {"x": np.ones((1, 16), np.float32)}
    for artifact in ("b.onnx", "b.ort"):
        np.testing.assert_allclose(run_ort(out.parent / artifact, x)[0], x["x"] @ weights(), rtol=1e-5)


def test_failed_build_leaves_nothing_behind(tmp_path, capsys):
    broken = tmp_path / "m.onnx"  # an op ORT does not know
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], domain="nowhere")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("nowhere", 1)]), broken)
    assert_refused(*cli(capsys, "build", broken, "-t", "x86-cpu", "-o", tmp_path / "out" / "b.onnx"))
    assert list((tmp_path / "out").iterdir()) == []


# ------------------------------------------------------------------ temporary files of killed runs

def test_temporary_files_of_dead_runs_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = outputs.temp_prefix().split("-")[2]
    old = time.time() - 2 * outputs.FOREIGN_TEMP_AGE_S
    made = {
        "dead folder": (tmp_path / f".edgepack-tmp-{host}-{dead.pid}-a1", True),
        "dead file": (tmp_path / f".edgepack-tmp-{host}-{dead.pid}-b2", True),
        "live": (tmp_path / f"{outputs.temp_prefix()}c3", False),
        "other host, fresh": (tmp_path / ".edgepack-tmp-0000beef-1-d4", False),
        "other host, old": (tmp_path / ".edgepack-tmp-0000beef-2-e5", True),
        "not ours": (tmp_path / ".model.onnx.x1.tmp", False),
    }
    for name, (path, _) in made.items():
        if "folder" in name:
            path.mkdir()
            (path / "model.onnx.data").write_bytes(b"\0" * 100)
        else:
            path.write_bytes(b"x")
    os.utime(made["other host, old"][0], (old, old))
    io.write_atomic(tmp_path / "out.json", "{}")
    for name, (path, removed) in made.items():
        assert path.exists() != removed, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".edgepack-tmp-") and p not in
                (made["live"][0], made["other host, fresh"][0])]


@pytest.mark.slow
def test_a_killed_save_leaves_a_temporary_folder_that_the_next_run_removes(tmp_path):
    script = ("import os, onnx_ir as ir, numpy as np; from edgepack import io\n"
              "def die(*a, **k): os._exit(9)\n"
              "ir.save = die\n"
              "io.save(ir.Model(ir.Graph([], [], nodes=[]), ir_version=10), 'out/m.onnx')\n")
    (tmp_path / "out").mkdir()
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 9, result.stderr
    left = [p for p in (tmp_path / "out").iterdir() if p.name.startswith(outputs.TEMP_PREFIX)]
    assert len(left) == 1 and left[0].is_dir()
    io.write_atomic(tmp_path / "out" / "other.json", "{}")
    assert not left[0].exists()


# ---------------------------------------------------------------- data: issue 23 item 3
# Data is read only inside the folder the user named; images are refused above a pixel budget
# from their header; FIFOs and devices are refused; data must be numbers.

DATA_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
net (float[N,3,4,4] x) => (float[N,3] y) {
    p = GlobalAveragePool(x)
    y = Flatten(p)
}"""


def _png(path: Path, width: int, height: int) -> Path:
    """A genuine grey PNG of width x height zeros, compressed row by row (a 13000 x 13000 one is
    about 170 KB on disk and 169 MB decoded, 507 MB as RGB)."""
    import struct

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte + pixels
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _small_images(folder: Path, count: int = 2) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((4, 4, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def data_model(tmp_path) -> Path:
    from tests.helpers import save_text_model

    return save_text_model(DATA_MODEL, tmp_path / "m.onnx")


def test_image_bombs_are_refused_from_their_header_with_little_memory(data_model, tmp_path):
    """Eight 13000 x 13000 PNGs: one error line, in a fresh process whose peak memory stays under
    1 GB (decoding one would take 0.5 GB as RGB; the issue measured 5 GB for eight)."""
    folder = tmp_path / "bombs"
    folder.mkdir()
    bomb = _png(folder / "0.png", 13000, 13000)
    assert bomb.stat().st_size < 400_000
    for i in range(1, 8):
        (folder / f"{i}.png").write_bytes(bomb.read_bytes())
    script = ("import resource, sys\nfrom edgepack.cli import main\n"
              f"code = main(['calibrate', {str(data_model)!r}, '--data', {str(folder)!r}, '-o', "
              f"{str(tmp_path / 'r.json')!r}])\n"
              "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert "13000x13000 pixels, above the budget" in errors[0] and "0.png" in errors[0]
    peak_kb = int(done.stdout.split("PEAK_KB")[1])
    assert peak_kb < 1024 * 1024, f"peak {peak_kb} KB"
    assert not (tmp_path / "r.json").exists()


def test_pil_limit_is_set_to_the_budget(tmp_path, monkeypatch):
    """The budget is also PIL's own limit (which raises at twice it): a decoder that skipped the
    header check would still stop."""
    from PIL import Image

    from edgepack.calib.images import decode

    monkeypatch.setenv("EDGEPACK_MAX_IMAGE_PIXELS", "100")
    small = _png(tmp_path / "s.png", 20, 20)
    with pytest.raises(EdgepackError, match="20x20 pixels, above the budget of 100"):
        decode(small)
    assert Image.MAX_IMAGE_PIXELS == 100
    monkeypatch.setenv("EDGEPACK_MAX_IMAGE_PIXELS", "400")
    assert decode(small).shape == (20, 20, 3)


@pytest.mark.parametrize("case", ["manifest-folder-up", "manifest-folder-absolute", "files-absolute",
                                  "linked-image", "linked-folder", "linked-npz"])
def test_data_is_read_only_inside_the_folder_the_user_named(case, data_model, tmp_path, capsys, monkeypatch):
    outside = _small_images(tmp_path / "outside")
    np.savez(outside / "secret.npz", x=np.ones((2, 3, 4, 4), np.float32))
    data = tmp_path / "data"
    data.mkdir()
    if case == "manifest-folder-up":
        (data / "manifest.toml").write_text('[images]\nfolder = "../outside"\n')
    elif case == "manifest-folder-absolute":
        (data / "manifest.toml").write_text(f'[images]\nfolder = "{outside}"\n')
    elif case == "files-absolute":
        (data / "manifest.toml").write_text(f'[files]\ncalibration = "{outside / "secret.npz"}"\n')
    elif case == "linked-image":
        _small_images(data)
        (data / "9.png").symlink_to(outside / "0.png")
    elif case == "linked-folder":
        _small_images(data)
        (data / "more").symlink_to(outside)
    elif case == "linked-npz":
        (data / "manifest.toml").write_text('[files]\ncalibration = "calib.npz"\n')
        (data / "calib.npz").symlink_to(outside / "secret.npz")
    args = ["calibrate", data_model, "--data", data, "-o", tmp_path / "r.json"]
    code, err = cli(capsys, *args)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "outside the data folder" in err and "EDGEPACK_DATA_OUTSIDE=1" in err
    monkeypatch.setenv("EDGEPACK_DATA_OUTSIDE", "1")  # the explicit opt-in reads it
    code, err = cli(capsys, *args)
    assert code == 0, err


def test_fifos_are_refused_as_data_and_as_images(data_model, tmp_path):
    """A FIFO would block the read forever: refused before it is opened (in a fresh process with
    a timeout, so that a regression fails instead of hanging)."""
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    folder = _small_images(tmp_path / "imgs")
    os.mkfifo(folder / "z.png")
    for data in (fifo, folder):
        done = edgepack_cli_with_timeout("calibrate", str(data_model), "--data", str(data), "-o",
                                         str(tmp_path / "r.json"))
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1 and len(errors) == 1, done.stderr
        assert "not a regular file or folder" in errors[0]


def edgepack_cli_with_timeout(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgepack", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("dtype", ["complex64", "object", "U3", "datetime64[s]"])
def test_data_must_be_numbers(dtype, data_model, tmp_path, capsys):
    array = np.ones((2, 3, 4, 4)).astype(dtype) if dtype != "object" else np.empty((2, 3, 4, 4), object)
    if dtype == "object":  # numpy writes it only with pickles, which edgepack never loads
        np.save(tmp_path / "x.npy", array, allow_pickle=True)
        source = tmp_path / "x.npy"
    else:
        np.savez(tmp_path / "x.npz", x=array)
        source = tmp_path / "x.npz"
    code, err = cli(capsys, "calibrate", data_model, "--data", source, "-o", tmp_path / "r.json")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "numeric" in err or "not numbers" in err or "Python objects" in err
    # from Python too: a complex batch is refused, not cast
    from edgepack.calib import calibrate

    with pytest.raises(EdgepackError, match="not numbers"):
        calibrate(io.load(data_model), [{"x": np.ones((2, 3, 4, 4), np.complex64)}])
