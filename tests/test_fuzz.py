"""Fuzzing with hostile and careless inputs: seeded mutations of real files, run through the CLI.

Seeds: a small CNN (weights embedded), the same CNN with its weights in external data, its .epk
package, a recipe, a target file, a calibration .npz, a recipe with a profile step and a run
folder (run.json + a profile report) for `report`. Mutations: byte flips, truncation, inserted
bytes, protobuf field edits (dims, types, op types, names, external-data locations pointing at a
canary file outside the input's folder), TOML values of the wrong type or size, profile counts
and durations of 10^9-10^26 and recipes nested 17-3000 deep, run.json values of other types,
baselines and reports named outside the run folder (the canary), cycles and 5000-deep nesting.

Each case runs in-process (`edgepack.cli.main`, stderr captured), a few in a fresh interpreter, and
must end in one of two ways:
    exit 0, and the output it wrote is a valid model (onnx.checker)
    exit 1 or 2, exactly one `error:` line on stderr, no traceback, no output file
and in both: the input files are unchanged (sha256), the canary folder beside the input's folder
is never opened (an audit hook on `open`), and the canary's bytes appear in no output.
"""
from __future__ import annotations

import contextlib
import hashlib
import io as stdio
import json
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepack import io
from edgepack.cli import main
from tests.helpers import edgepack_cli
from tests.passes.nets import NetBuilder

SEED = 12
CANARY = b"CANARY-" + bytes(range(256)) * 4  # recognizable, and 1 KiB: enough for any small tensor

_opened: list[str] = []
_recording = False


def _audit(event, args):
    if _recording and event == "open" and args and isinstance(args[0], (str, bytes)):
        _opened.append(args[0] if isinstance(args[0], str) else args[0].decode(errors="replace"))


pytestmark = pytest.mark.slow  # ~240 cases, about 30 s on 2 cores: bounded, runs in CI

sys.addaudithook(_audit)  # cannot be removed; it records only while a case runs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "secret").mkdir()
    (root / "secret" / "canary.bin").write_bytes(CANARY)
    seeds = root / "seeds"
    seeds.mkdir()
    b = NetBuilder(0)
    y = b.conv_bn("x", 3, 8, 3)
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    model = b.model(["N", 3, 8, 8], b.gemm(y, 8, 4), ["N", 4])
    io.save(model, seeds / "m.onnx")
    (seeds / "ext").mkdir()
    io.save(model, seeds / "ext" / "e.onnx", external_data=True)
    code, err = _run(["pack", str(seeds / "m.onnx"), "-o", str(seeds / "m.epk")])
    assert code == 0, err
    np.savez(seeds / "d.npz", x=np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32))
    (seeds / "t.toml").write_text((io_targets() / "x86-cpu.toml").read_text())
    (seeds / "r.toml").write_text('model = "m.onnx"\ntargets = ["x86-cpu"]\n\n[[step]]\nrun = "optimize"\n\n'
                                  '[[step]]\nrun = "prune"\nsparsity = 0.5\n')
    (seeds / "p.toml").write_text('model = "m.onnx"\ntargets = ["x86-cpu"]\n\n[[step]]\nrun = "profile"\n'
                                  'runs = 5\nwarmup = 1\nlayer-runs = 0\nno-history = true\n')
    run = seeds / "run"  # a run folder for `report`: run.json and one profile report
    (run / "x86-cpu").mkdir(parents=True)
    code, err = _run(["profile", str(seeds / "m.onnx"), "-t", "x86-cpu", "--runs", "5", "--warmup", "1",
                      "--layer-runs", "2", "--no-history", "--json", str(run / "x86-cpu" / "profile.json")])
    assert code == 0, err
    (run / "run.json").write_text(json.dumps({
        "schema": "edgepack.run/1", "recipe": "p.toml", "model": "m.onnx", "model_size_bytes": 1000,
        "targets": ["x86-cpu"], "baseline": None,
        "steps": [{"id": "profile", "command": "profile", "target": "x86-cpu", "status": "done", "seconds": 1.0,
                   "note": "", "inputs": ["model"], "artifact": None, "report": "x86-cpu/profile.json"}]}))
    return root


def io_targets() -> Path:
    from edgepack.targets import target_dir

    return target_dir()


def _run(argv: list[str]) -> tuple[int, str]:
    err = stdio.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdio.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, err.getvalue()


# ---------------------------------------------------------------- mutators

def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def insert_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data))
    return data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[at:]


BYTE_MUTATORS = (flip_bytes, truncate, insert_bytes)


def edit_model(data: bytes, rng: random.Random) -> bytes:
    """A protobuf field edit that keeps the file parseable."""
    proto = onnx.ModelProto.FromString(data)
    graph = proto.graph
    choice = rng.randrange(9)
    tensors = list(graph.initializer)
    if choice == 0 and tensors:  # weights read from the canary, by a relative or absolute path
        t = rng.choice(tensors)
        t.ClearField("raw_data")
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        del t.external_data[:]
        location = rng.choice(["../secret/canary.bin", "../../secret/canary.bin", "CANARY_ABS",
                               "./../secret/canary.bin", "secret/../../secret/canary.bin"])
        for key, value in (("location", location), ("offset", str(rng.choice([0, 7, 10**6]))),
                           ("length", str(rng.choice([t.ByteSize(), 4 * int(np.prod(t.dims or [1])), 10**12])))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    elif choice == 1 and tensors:
        t = rng.choice(tensors)
        t.dims[:] = [rng.choice([0, 1, 3, 2**31, -1]) for _ in range(rng.randint(0, 4))]
    elif choice == 2 and tensors:
        rng.choice(tensors).data_type = rng.choice([0, 2, 8, 16, 99])
    elif choice == 3 and graph.node:
        rng.choice(graph.node).op_type = rng.choice(["NoSuchOp", "Loop", "", "Conv"])
    elif choice == 4 and graph.node:
        node = rng.choice(graph.node)
        node.input[:] = [rng.choice(["x", "missing", "", node.output[0]]) for _ in node.input]
    elif choice == 5:
        graph.input[0].type.tensor_type.elem_type = rng.choice([0, 9, 11, 13])
    elif choice == 6:
        del graph.input[:]
    elif choice == 7:
        proto.opset_import[0].version = rng.choice([0, 1, 7, 99])
    else:
        dims = graph.input[0].type.tensor_type.shape.dim
        if dims:
            rng.choice(list(dims)).dim_value = rng.choice([0, 1, 10**9])
    return proto.SerializeToString()


TOML_VALUES = ['5', '"x"', '[1, 2]', 'true', '1e38', '-1', '100000', '"../../x/evil"', '"/etc/passwd"',
               '{a = 1}', '""', '"x86-cpu"', '0.5', '"abc"', '[]']


def edit_toml(data: bytes, rng: random.Random) -> bytes:
    lines = data.decode(errors="replace").splitlines()
    candidates = [i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
    choice = rng.randrange(3)
    if choice == 0 and candidates:  # a value of another type or size
        i = rng.choice(candidates)
        lines[i] = lines[i].split("=", 1)[0] + "= " + rng.choice(TOML_VALUES)
    elif choice == 1 and candidates:
        del lines[rng.choice(candidates)]
    else:
        lines.insert(rng.randrange(len(lines) + 1), rng.choice(["input = 5", "threads = 100000",
                     'execution_providers = [1, 2]', 'step = "x"', "[[step]]", 'run = "build"',
                     'tensorrt_cache = "/tmp/x"', 'id = "../x"', "sparsity = 2"]))
    return ("\n".join(lines) + "\n").encode()


def edit_npz(data: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    buf = stdio.BytesIO()
    if choice == 0:
        np.savez(buf, x=np.full((2, 3, 8, 8), rng.choice([1e38, np.nan, np.inf]), np.float32))
    elif choice == 1:
        np.savez(buf, x=np.zeros(rng.choice([(2, 3, 8, 9), (0, 3, 8, 8), (2, 3), ()]), np.float32))
    elif choice == 2:
        np.savez(buf, x=np.ones((2, 3, 8, 8), rng.choice([bool, np.int64, np.float16, np.complex64])))
    else:
        np.savez(buf, y=np.ones((2, 3, 8, 8), np.float32))
    return buf.getvalue()


HUGE_VALUES = ['10000000000000', '"99999999s"', '1e300', '-5', '"x"', '[1]', '1000000000', '"1000000000000ms"',
               '100000000000000000000000000', '"1e9s"', '{a = 1}']


def edit_profile_toml(data: bytes, rng: random.Random) -> bytes:
    """A profile step's count or duration made huge, negative or of another type (or nested deep)."""
    text = data.decode()
    if rng.random() < 0.15:
        return (text + "deep = " + "[" * rng.choice([17, 300, 3000]) + "]" * 3000 + "\n").encode()
    key = rng.choice(["runs", "warmup", "duration", "layer-runs", "batch"])
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
    if key == "duration":
        lines = [line for line in lines if not line.startswith("runs =")]
    lines.append(f"{key} = {rng.choice(HUGE_VALUES)}")
    return ("\n".join(lines) + "\n").encode()


JSON_VALUES = [None, 5, -1, 1e308, "x", [], {}, True, "CANARY_ABS", "../secret/canary.bin",
               "../../secret/canary.bin", [[[[[]]]]], {"id": "x"}, ["profile", "profile"]]


def edit_run_json(data: bytes, rng: random.Random) -> bytes:
    """run.json with a value replaced somewhere (types, paths out of the folder, cycles, depth)."""
    run = json.loads(data)
    choice = rng.randrange(6)
    if choice == 0:
        run["baseline"] = rng.choice(["CANARY_ABS", "../secret/canary.bin", "/etc/hostname"])
    elif choice == 1:
        run["steps"][0]["report"] = rng.choice(["CANARY_ABS", "../../secret/canary.bin", "../secret/canary.bin"])
    elif choice == 2:  # a cycle or a self-reference in the inputs
        run["steps"].append(dict(run["steps"][0], id="b", inputs=["profile"]))
        run["steps"][0]["inputs"] = ["b"]
    elif choice == 3:
        nested: list = []
        for _ in range(rng.choice([70, 5000])):
            nested = [nested]
        run[rng.choice(["steps", "targets", "extra"])] = nested
    else:
        holder = run if choice == 4 else run["steps"][0]
        holder[rng.choice(list(holder))] = rng.choice(JSON_VALUES)
    return json.dumps(run).encode() if choice != 3 else _deep_dumps(run)


def _deep_dumps(value) -> bytes:
    """json.dumps without recursion limits (for the deep case): lists of lists written by hand."""
    try:
        return json.dumps(value).encode()
    except RecursionError:
        return b'{"steps": ' + b"[" * 5000 + b"]" * 5000 + b"}"


# ---------------------------------------------------------------- cases

KINDS = {  # kind: (seed file, structured mutator, commands: argv templates; {i} input, {o} output folder)
    "model": ("m.onnx", edit_model, [["inspect", "{i}"], ["inspect", "{i}", "--no-check"], ["optimize", "{i}", "-o", "{o}/out.onnx"],
                                     ["prune", "{i}", "-o", "{o}/out.onnx", "--sparsity", "0.5"]]),
    "external": ("ext/e.onnx", edit_model, [["inspect", "{i}"], ["compress", "clip", "{i}", "-o", "{o}/out.onnx",
                                                                 "--percentile", "99"]]),
    "package": ("m.epk", None, [["unpack", "{i}", "-o", "{o}/out.onnx"]]),
    "target": ("t.toml", edit_toml, [["build", "{s}/m.onnx", "-t", "{i}", "-o", "{o}/out.onnx"]]),
    "recipe": ("r.toml", edit_toml, [["run", "{i}", "-o", "{o}/run"]]),
    "data": ("d.npz", edit_npz, [["calibrate", "{s}/m.onnx", "--data", "{i}", "-o", "{o}/out.json"]]),
    "profile": ("p.toml", edit_profile_toml, [["run", "{i}", "-o", "{o}/run"]]),
    "runfolder": ("run/run.json", edit_run_json, [["report", "{s}/run", "-o", "{o}/report.html"]]),
}
CASES_PER_KIND = {"model": 70, "external": 40, "package": 45, "target": 30, "recipe": 15, "data": 35,
                  "profile": 12, "runfolder": 30}


def _cases():
    rng = random.Random(SEED)
    for kind, count in CASES_PER_KIND.items():
        for n in range(count):
            yield pytest.param(kind, rng.randrange(2**32), id=f"{kind}-{n}")


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _mutated_case(corpus: Path, tmp_path: Path, kind: str, seed: int) -> tuple[Path, list[str], Path]:
    rng = random.Random(seed)
    seed_file, structured, commands = KINDS[kind]
    work = tmp_path / "in" / "model"
    shutil.copytree(corpus / "seeds", work)
    target = work / seed_file
    data = target.read_bytes()
    if structured is not None and rng.random() < 0.6:
        data = structured(data, rng)
        data = data.replace(b"CANARY_ABS", str(corpus / "secret" / "canary.bin").encode())
    else:
        data = rng.choice(BYTE_MUTATORS)(data, rng)
    target.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    argv = [part.format(i=target, o=out, s=work) for part in rng.choice(commands)]
    return work, argv, out


def _check_outcome(corpus: Path, work: Path, before: dict, code: int, err: str, out: Path, argv) -> None:
    where = f"{argv}\n{err}"
    assert code in (0, 1, 2), where
    assert "Traceback" not in err and "internal error" not in err, where
    written = [p for p in out.rglob("*") if p.is_file()]
    if code == 0:
        for path in written:
            if path.suffix == ".onnx":
                onnx.checker.check_model(str(path))
    else:
        errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert len(errors) == 1, where
        if argv[0] != "run":  # a recipe keeps the artifacts of the steps before the failing one
            assert not [p for p in written if not p.name.startswith(".")], where
    assert _hashes(work) == before, f"an input changed: {where}"
    for path in written:
        assert CANARY[:64] not in path.read_bytes(), f"canary bytes in {path}: {where}"


@pytest.mark.parametrize("kind,seed", list(_cases()))
def test_fuzz_in_process(corpus, tmp_path, kind, seed):
    global _recording
    work, argv, out = _mutated_case(corpus, tmp_path, kind, seed)
    before = _hashes(work)
    _opened.clear()
    _recording = True
    try:
        code, err = _run(argv)
    finally:
        _recording = False
    secret = str(corpus / "secret")
    leaked = [p for p in _opened if str(Path(p).resolve() if "\0" not in p else p).startswith(secret)]
    assert not leaked, f"opened {leaked}: {argv}\n{err}"
    _check_outcome(corpus, work, before, code, err, out, argv)


@pytest.mark.parametrize("kind,seed", [("model", 1), ("external", 2), ("package", 3)])
def test_fuzz_in_a_fresh_interpreter(corpus, tmp_path, kind, seed):
    """The same contract as a user sees it: exit status and stderr of `python -m edgepack`."""
    work, argv, out = _mutated_case(corpus, tmp_path, kind, seed)
    before = _hashes(work)
    result = edgepack_cli(*argv, cwd=tmp_path)
    _check_outcome(corpus, work, before, result.returncode, result.stderr, out, argv)


def test_mutated_image_folders_end_cleanly(tmp_path, capsys):
    """Seeded mutations of PNG/JPEG files in an image folder (header sizes up to 2^31, byte flips,
    truncation): each `calibrate` exits 0 or 1 with one error line, and never decodes a bomb."""
    import struct
    import zlib

    from PIL import Image

    from tests.helpers import save_text_model

    model = save_text_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        net (float[N,3,4,4] x) => (float[N,3] y) {
            p = GlobalAveragePool(x)
            y = Flatten(p)
        }""", tmp_path / "m.onnx")
    rng = random.Random(SEED)
    good = tmp_path / "good.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(good)
    Image.fromarray(np.full((4, 4, 3), 9, np.uint8)).save(tmp_path / "good.jpg")
    seeds = [good.read_bytes(), (tmp_path / "good.jpg").read_bytes()]
    for case in range(24):
        data = bytearray(rng.choice(seeds))
        kind = rng.choice(["size", "flip", "truncate"])
        if kind == "size" and data[:4] == b"\x89PNG":  # IHDR width/height, CRC fixed so PIL reads it
            width, height = rng.choice([1, 4, 70000, 2**31 - 1]), rng.choice([1, 4, 70000, 2**31 - 1])
            data[16:24] = struct.pack(">II", width, height)
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        elif kind == "flip" or kind == "size":
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            data = data[:rng.randrange(8, len(data))]
        folder = tmp_path / f"case{case}"
        folder.mkdir()
        (folder / ("x.png" if data[:4] == b"\x89PNG" else "x.jpg")).write_bytes(bytes(data))
        code = main(["calibrate", str(model), "--data", str(folder), "-o", str(tmp_path / f"r{case}.json"),
                     "--resize", "4", "--crop", "4"])
        err = capsys.readouterr().err
        assert code in (0, 1), (case, kind, err)
        assert "Traceback" not in err and "internal error" not in err, (case, kind, err)
        if code == 1:
            assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err
