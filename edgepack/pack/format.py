"""The .epk container, in the spirit of Deep Compression (prune, share weights, entropy-code).

Layout:  b"EPK\\0" | u16 version | u32 header length | header (JSON, UTF-8) | payload
The header holds versions, the mode, sha256 of the original model file, of the weights and of the
payload, and where each tensor lives. The payload is a few streams, each compressed on its own
with whichever of zstd (when installed), xz/lzma and zlib gives the fewest bytes:
    graph      the ONNX model with the large initializers' bytes taken out
    dense      weights stored whole, byte-shuffled (byte k of every element together)
    values     the non-zero weights of sparse tensors, byte-shuffled
    deltas     their positions as gaps to the previous one (uint8/16/32, the smallest that fits)
    indices    codebook mode: each weight's centroid index (uint8 for <= 256 entries)
    centroids  codebook mode: each layer's centroids
Lossless mode gives back the same graph and byte-identical weights; codebook mode replaces each
float weight tensor's non-zero values by the nearest of 2**bits centroids (zeros stay exact).
"""
from __future__ import annotations

import hashlib
import json
import logging
import lzma
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from edgepack import io
from edgepack.errors import EdgepackError, first_line
from edgepack.pack.codebook import kmeans_1d

logger = logging.getLogger(__name__)

MAGIC = b"EPK\0"
VERSION = 1
FORMAT = "edgepack.pack/1"
STREAMS = ("table", "graph", "dense", "values", "deltas", "indices", "centroids")
_PREFIX = struct.Struct("<4sHI")
_MIN_BYTES = 64  # smaller initializers stay inside the graph stream
_NUMERIC = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.uint8,
                                  np.int16, np.uint16, np.int32, np.int64)}


# ------------------------------------------------------------------ codecs
def _codecs() -> dict:
    codecs = {
        "zlib": (lambda b: zlib.compress(b, 9), zlib.decompress),
        "xz": (lambda b: lzma.compress(b, preset=6), lzma.decompress),  # 9 and extreme: no smaller here, 5x slower
    }
    try:
        import zstandard
    except ImportError:
        return codecs
    codecs["zstd"] = (lambda b: zstandard.ZstdCompressor(level=19).compress(b),
                      lambda b: zstandard.ZstdDecompressor().decompress(b))
    return codecs


def _compress(data: bytes) -> tuple[str, bytes]:
    """The smallest encoding of `data` among the available codecs (or raw)."""
    best = ("raw", data)
    for name, (encode, _) in _codecs().items():
        packed = encode(data)
        if len(packed) < len(best[1]):
            best = (name, packed)
    return best


def _decompress(codec: str, data: bytes, where: str) -> bytes:
    if codec == "raw":
        return data
    codecs = _codecs()
    if codec not in codecs:
        raise EdgepackError(f"{where}: compressed with '{codec}', which is not installed",
                            hint="pip install zstandard" if codec == "zstd" else None)
    try:
        return codecs[codec][1](data)
    except Exception as exc:
        raise EdgepackError(f"{where}: cannot be decompressed ({exc})", hint="the file is corrupt") from None


def _shuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(data: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not data:
        return data
    return np.frombuffer(data, np.uint8).reshape(itemsize, -1).T.tobytes()


def encode_gaps(positions: np.ndarray) -> np.ndarray:
    """Sorted positions as uint8 gaps to the previous one (the first from -1), as in Deep
    Compression: a gap g in 1..255 is one byte; a longer one is preceded by (g-1)//255 filler
    bytes 0, each standing for +255 with no weight."""
    gaps = np.diff(positions, prepend=-1).astype(np.int64)
    fillers = (gaps - 1) // 255
    last = gaps - 255 * fillers
    out = np.zeros(int(fillers.sum()) + gaps.size, np.uint8)
    out[np.cumsum(fillers + 1) - 1] = last
    return out


def decode_gaps(codes: np.ndarray) -> np.ndarray:
    steps = np.where(codes == 0, 255, codes.astype(np.int64))
    return (np.cumsum(steps) - 1)[codes != 0]


# ------------------------------------------------------------------ pack
class _Streams:
    def __init__(self):
        self.parts = {name: [] for name in STREAMS}
        self.sizes = dict.fromkeys(STREAMS, 0)

    def add(self, name: str, data: bytes) -> list[int]:
        self.parts[name].append(data)
        start = self.sizes[name]
        self.sizes[name] += len(data)
        return [start, len(data)]


def pack(model_path: str | Path, output: str | Path, *, codebook_bits: int | None = None,
         sparse_below: float = 0.5) -> dict:
    """Write `model_path` as an .epk container; returns the report (sizes, per-stream codecs).

    `codebook_bits`: None for lossless; else each float weight tensor's non-zero values share
    2**bits centroids (lossy). A tensor is stored sparse when under `sparse_below` of it is non-zero.
    """
    if codebook_bits is not None and not 1 <= codebook_bits <= 16:
        raise EdgepackError(f"--codebook {codebook_bits}: bits must be 1..16", hint="e.g. --codebook 8")
    started = time.perf_counter()
    model_path = Path(model_path)
    model = io.load(model_path)
    if io.weights_nbytes(model) > io.EXTERNAL_DATA_THRESHOLD:
        raise EdgepackError(f"{model_path}: weights over 2 GB; pack holds a model in one protobuf",
                            hint="compress it with `edgepack compress`/`prune` and zstd instead")
    model = ir.external_data.load_to_model(model)  # external weights go into the package too
    proto = ir.serde.serialize_model(model)
    streams, tensors, weights_hash = _Streams(), [], hashlib.sha256()
    from tqdm import tqdm

    large = len(proto.graph.initializer) > 50 or proto.ByteSize() > 64 * 2**20
    for position, init in enumerate(tqdm(proto.graph.initializer, desc="packing", unit="tensor",
                                         leave=False, disable=not large)):
        if not init.HasField("raw_data") or len(init.raw_data) < _MIN_BYTES:
            continue
        raw = init.raw_data
        weights_hash.update(raw)
        entry = {"position": position, "name": init.name, "data_type": init.data_type,
                 "shape": list(init.dims), "bytes": len(raw)}
        entry.update(_encode(raw, init.data_type, streams, codebook_bits, sparse_below))
        tensors.append(entry)
        init.ClearField("raw_data")
    streams.add("graph", proto.SerializeToString())
    streams.add("table", json.dumps(tensors, separators=(",", ":")).encode())

    payload, table = bytearray(), []
    for name in STREAMS:
        data = b"".join(streams.parts[name])
        codec, packed = _compress(data)
        table.append({"name": name, "codec": codec, "offset": len(payload), "length": len(packed),
                      "raw_length": len(data)})
        payload += packed
    from edgepack import __version__

    header = {
        "format": FORMAT,
        "mode": "lossless" if codebook_bits is None else "codebook",
        "codebook_bits": codebook_bits,
        "versions": {"edgepack": __version__, "onnx": onnx.__version__, "ir_version": model.ir_version,
                     "opset": {d or "ai.onnx": v for d, v in model.opset_imports.items()}},
        "source": model_path.name,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "weights_sha256": weights_hash.hexdigest(),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "payload_bytes": len(payload),
        "streams": table,
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode()
    blob = _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + bytes(payload)
    output = Path(output)
    if not (output.parent if str(output.parent) else Path(".")).is_dir():
        raise EdgepackError(f"output folder does not exist: {output.parent}", hint="create it first")
    io.write_atomic(output, blob)
    seconds = time.perf_counter() - started
    logger.info("packed %s in %.2f s", model_path, seconds)
    original = io.files_nbytes(model_path, model)
    return {"schema": "edgepack.pack/1", "model": str(model_path), "output": str(output),
            "mode": header["mode"], "codebook_bits": codebook_bits, "model_bytes": original,
            "packed_bytes": len(blob), "ratio": original / len(blob), "seconds": seconds,
            "tensors": len(tensors), "sparse_tensors": sum(t["encoding"] == "sparse" for t in tensors),
            "streams": [{k: s[k] for k in ("name", "codec", "length", "raw_length")} for s in table]}


def _encode(raw: bytes, data_type: int, streams: _Streams, bits: int | None, sparse_below: float) -> dict:
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).newbyteorder("<")
    except Exception:
        dtype = None
    if dtype is None or dtype.newbyteorder("=") not in _NUMERIC or len(raw) % dtype.itemsize:
        return {"encoding": "dense", "itemsize": 1, "dense": streams.add("dense", raw)}
    flat = np.frombuffer(raw, dtype)
    positions = np.flatnonzero(flat)
    entry: dict = {"itemsize": dtype.itemsize}
    sparse = positions.size < sparse_below * flat.size
    values = flat[positions] if sparse else flat
    if sparse:
        entry.update(encoding="sparse", nnz=int(positions.size),
                     deltas=streams.add("deltas", encode_gaps(positions).tobytes()))
    else:
        entry["encoding"] = "dense"
    if bits is not None and dtype.kind in "fiu" and values.size > 2 ** bits \
            and np.unique(values).size > 2 ** bits:
        centroids, index = kmeans_1d(values, 2 ** bits)
        if dtype.kind != "f":  # integer weights keep integer values (zero points are not touched)
            centroids = np.round(centroids)
        entry.update(codebook=len(centroids), index_dtype=index.dtype.str,
                     centroids=streams.add("centroids", centroids.astype(dtype).tobytes()),
                     indices=streams.add("indices", index.tobytes()))
    elif sparse:
        entry["values"] = streams.add("values", _shuffle(values.tobytes(), dtype.itemsize))
    else:
        entry["dense"] = streams.add("dense", _shuffle(raw, dtype.itemsize))
    return entry


# ------------------------------------------------------------------ unpack
def read_header(path: str | Path) -> tuple[dict, bytes]:
    """(header, payload) of an .epk file, after checking magic, version, lengths and checksum."""
    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"package not found: {path}", hint="check the path")
    blob = path.read_bytes()
    if len(blob) < _PREFIX.size or blob[:4] != MAGIC:
        raise EdgepackError(f"{path}: not an edgepack package (bad magic)",
                            hint="pass a file written by `edgepack pack`")
    _, version, header_len = _PREFIX.unpack_from(blob)
    if version != VERSION:
        raise EdgepackError(f"{path}: package format version {version}, this edgepack reads {VERSION}",
                            hint="unpack it with the edgepack version that packed it")
    end = _PREFIX.size + header_len
    if end > len(blob):
        raise EdgepackError(f"{path}: truncated (header cut short)", hint="copy the file again")
    try:
        header = json.loads(blob[_PREFIX.size:end])
    except ValueError:
        raise EdgepackError(f"{path}: corrupt header", hint="copy the file again") from None
    if not isinstance(header, dict) or not isinstance(header.get("streams"), list):
        raise EdgepackError(f"{path}: corrupt header (not a table of streams)", hint="copy the file again")
    payload = blob[end:]
    if len(payload) != header.get("payload_bytes"):
        raise EdgepackError(f"{path}: truncated or padded (payload {len(payload)} bytes, header says "
                            f"{header.get('payload_bytes')})", hint="copy the file again")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise EdgepackError(f"{path}: corrupt (payload checksum mismatch)", hint="copy the file again")
    return header, payload


def unpack_model(path: str | Path) -> tuple[ir.Model, dict]:
    """The model stored in an .epk file, and its header. A package whose header or table is
    malformed, or whose model is empty or fails the ONNX checker, is refused in one line."""
    try:
        model, header = _read_model(path)
    except EdgepackError:
        raise
    except MemoryError:
        raise EdgepackError(f"{path}: the package declares more data than fits in memory",
                            hint="the file is corrupt or hostile") from None
    except Exception as exc:  # KeyError, IndexError, TypeError, protobuf DecodeError...: a bad header
        raise EdgepackError(f"{path}: malformed package ({type(exc).__name__}: {first_line(exc)})",
                            hint="the file is corrupt or was not written by `edgepack pack`") from None
    if model.ir_version == 0 or not model.opset_imports or not model.graph.outputs:
        raise EdgepackError(f"{path}: the package holds an empty or incomplete ONNX model",
                            hint="the file is corrupt or was not written by `edgepack pack`")
    try:
        io.check_model(model)
    except Exception as exc:  # onnx's ValidationError, or onnx-ir's wrapper of it
        raise EdgepackError(f"{path}: the unpacked model fails the ONNX checker: {first_line(exc)}",
                            hint="the file is corrupt or was not written by `edgepack pack`") from None
    return model, header


def _read_model(path: str | Path) -> tuple[ir.Model, dict]:
    header, payload = read_header(path)
    streams = {}
    for entry in header["streams"]:
        data = payload[entry["offset"]:entry["offset"] + entry["length"]]
        streams[entry["name"]] = _decompress(entry["codec"], data, f"{path}: stream '{entry['name']}'")
    proto = onnx.ModelProto.FromString(streams["graph"])
    weights_hash = hashlib.sha256()
    for entry in json.loads(streams["table"]):
        raw = _decode(entry, streams)
        if header["mode"] == "lossless":
            weights_hash.update(raw)
        proto.graph.initializer[entry["position"]].raw_data = raw
    if header["mode"] == "lossless" and weights_hash.hexdigest() != header["weights_sha256"]:
        raise EdgepackError(f"{path}: weights do not match their checksum", hint="the file is corrupt")
    return ir.serde.deserialize_model(proto), header


def _take(streams: dict, name: str, span: list[int]) -> bytes:
    return streams[name][span[0]:span[0] + span[1]]


def _decode(entry: dict, streams: dict) -> bytes:
    itemsize = entry["itemsize"]
    if "codebook" in entry:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(entry["data_type"])).newbyteorder("<")
        centroids = np.frombuffer(_take(streams, "centroids", entry["centroids"]), dtype)
        values = centroids[np.frombuffer(_take(streams, "indices", entry["indices"]), entry["index_dtype"])]
    elif entry["encoding"] == "dense":
        return _unshuffle(_take(streams, "dense", entry["dense"]), itemsize)
    else:
        values = _unshuffle(_take(streams, "values", entry["values"]), itemsize)
    if entry["encoding"] == "dense":
        return values.tobytes()
    out = np.zeros(entry["bytes"], np.uint8)
    positions = decode_gaps(np.frombuffer(_take(streams, "deltas", entry["deltas"]), np.uint8))
    values = np.frombuffer(bytes(values), np.uint8).reshape(-1, itemsize)
    out.reshape(-1, itemsize)[positions] = values
    return out.tobytes()


def unpack(path: str | Path, output: str | Path) -> dict:
    """Write the model in an .epk file to `output` (ONNX); returns a short report."""
    started = time.perf_counter()
    model, header = unpack_model(path)
    io.save(model, output)
    return {"schema": "edgepack.unpack/1", "package": str(path), "output": str(output),
            "mode": header["mode"], "model_sha256": header["model_sha256"],
            "weights_sha256": header["weights_sha256"], "seconds": time.perf_counter() - started}
