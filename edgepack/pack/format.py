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

from edgepack.limits import available_memory
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
                                         leave=False, disable=not large or None)):
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
    from edgepack import outputs

    with outputs.command([model_path]):  # the model is never overwritten, also from the Python API
        io.write_atomic(output, blob)  # creates missing folders
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
    # non-zero by bytes: a float -0.0 is == 0 but must come back as -0.0 (lossless means bytes)
    positions = np.flatnonzero(flat.view(f"<u{dtype.itemsize}") if dtype.itemsize in (1, 2, 4, 8) else flat)
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
    """Nothing in a package is trusted before it is checked: every stream decompresses to exactly
    its declared size (refused as soon as it would grow past it), the declared sizes must add up
    to the table's tensors, each tensor's size to its shape and dtype in the graph, and the whole
    stays within what `pack` writes (weights under 2 GB), checked before anything is allocated.
    A package's graph holds no external data: its weights come from its own streams only.
    """
    header, payload = read_header(path)
    where = f"{path}"
    entries = _stream_entries(header, len(payload), where)
    table = _load_table(_stream(entries, payload, "table", where), where)
    sizes = _check_table(table, where)
    for name in STREAMS[2:]:
        if entries[name]["raw_length"] != sizes[name]:
            raise EdgepackError(f"{where}: stream '{name}' declares {entries[name]['raw_length']} bytes, "
                                f"its tensors {sizes[name]}", hint="the file is corrupt or not from `edgepack pack`")
    graph = _stream(entries, payload, "graph", where)
    try:
        proto = onnx.ModelProto.FromString(graph)
    except Exception:  # protobuf's DecodeError and friends
        raise EdgepackError(f"{where}: the graph stream is not an ONNX model", hint="the file is corrupt") from None
    _refuse_external_tensors(proto, where)
    initializers = proto.graph.initializer
    for entry in table:
        _check_entry_against_graph(entry, initializers, where)
    streams = {name: _stream(entries, payload, name, where) for name in STREAMS[2:]}
    weights_hash = hashlib.sha256()
    for entry in table:
        raw = _decode(entry, streams, where)
        if header.get("mode") == "lossless":
            weights_hash.update(raw)
        initializers[entry["position"]].raw_data = raw
    if header.get("mode") == "lossless" and weights_hash.hexdigest() != header.get("weights_sha256"):
        raise EdgepackError(f"{path}: weights do not match their checksum", hint="the file is corrupt")
    return ir.serde.deserialize_model(proto), header


# The most a package may unpack to: `pack` refuses weights over this (one protobuf), and the graph
# without its large initializers is far smaller still.
MAX_WEIGHT_BYTES = io.EXTERNAL_DATA_THRESHOLD
MAX_GRAPH_BYTES = 2**31 - 1
MAX_TABLE_BYTES = 64 * 2**20
_INDEX_DTYPES = {"|u1", "<u2", "<u4", "uint8", "uint16", "uint32"}


def _corrupt(where: str, what: str) -> EdgepackError:
    return EdgepackError(f"{where}: {what}", hint="the file is corrupt or not written by `edgepack pack`")


def _stream_entries(header: dict, payload_bytes: int, where: str) -> dict[str, dict]:
    """The header's stream table, checked: known names, spans inside the payload, bounded sizes."""
    streams = header.get("streams")
    if not isinstance(streams, list):
        raise _corrupt(where, "header has no stream table")
    entries: dict[str, dict] = {}
    for entry in streams:
        if not isinstance(entry, dict) or entry.get("name") not in STREAMS or entry["name"] in entries:
            name = entry.get("name") if isinstance(entry, dict) else entry
            raise _corrupt(where, f"unknown or repeated stream {name!r}")
        numbers = [entry.get(k) for k in ("offset", "length", "raw_length")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers) \
                or not isinstance(entry.get("codec"), str):
            raise _corrupt(where, f"stream '{entry['name']}' has no valid codec, offset, length or raw_length")
        if entry["offset"] + entry["length"] > payload_bytes:
            raise _corrupt(where, f"stream '{entry['name']}' lies past the end of the payload")
        entries[entry["name"]] = entry
    missing = [name for name in STREAMS if name not in entries]
    if missing:
        raise _corrupt(where, f"stream '{missing[0]}' is missing")
    limits = {"table": MAX_TABLE_BYTES, "graph": MAX_GRAPH_BYTES}
    for name, entry in entries.items():
        if entry["raw_length"] > limits.get(name, MAX_WEIGHT_BYTES):
            raise EdgepackError(f"{where}: stream '{name}' declares {entry['raw_length']:,} bytes unpacked, over "
                                f"the {limits.get(name, MAX_WEIGHT_BYTES):,} a package may hold; refused",
                                hint="the file is corrupt or a decompression bomb")
    total = sum(e["raw_length"] for e in entries.values())
    available = available_memory()
    if available is not None and total > available:
        raise EdgepackError(f"{where}: unpacking needs {total:,} bytes, more than the {available:,} bytes of "
                            "memory available; refused", hint="free memory, or unpack on a larger machine")
    return entries


def _stream(entries: dict, payload: bytes, name: str, where: str) -> bytes:
    entry = entries[name]
    data = payload[entry["offset"]:entry["offset"] + entry["length"]]
    return _decompress(entry["codec"], data, entry["raw_length"], f"{where}: stream '{name}'")


def _decompress(codec: str, data: bytes, size: int, where: str) -> bytes:
    """`data` decompressed, which must give exactly `size` bytes: decoding stops one byte past it,
    so a stream that would expand further is refused without ever being held in memory."""
    try:
        if codec == "raw":
            out = data
        elif codec == "zlib":
            out = zlib.decompressobj().decompress(data, size + 1)
        elif codec == "xz":
            out = lzma.LZMADecompressor().decompress(data, max_length=size + 1)
        elif codec == "zstd":
            try:
                import zstandard
            except ImportError:
                raise EdgepackError(f"{where}: compressed with zstd, which is not installed",
                                    hint="pip install zstandard") from None
            parts, got = [], 0
            with zstandard.ZstdDecompressor().stream_reader(data) as reader:
                while got <= size:
                    part = reader.read(min(size + 1 - got, 16 * 2**20))
                    if not part:
                        break
                    parts.append(part)
                    got += len(part)
            out = b"".join(parts)
        else:
            raise EdgepackError(f"{where}: compressed with '{codec}', which edgepack does not know",
                                hint="the file is corrupt or from a newer edgepack")
    except EdgepackError:
        raise
    except Exception as exc:  # zlib.error, LZMAError, ZstdError
        raise EdgepackError(f"{where}: cannot be decompressed ({exc})", hint="the file is corrupt") from None
    if len(out) != size:
        raise EdgepackError(f"{where}: decompresses to {'more' if len(out) > size else 'fewer'} than the "
                            f"{size:,} bytes its header declares; refused",
                            hint="the file is corrupt or a decompression bomb")
    return out


def _load_table(data: bytes, where: str) -> list[dict]:
    try:
        table = json.loads(data)
    except ValueError:
        raise _corrupt(where, "the tensor table is not JSON") from None
    if not isinstance(table, list) or not all(isinstance(e, dict) for e in table):
        raise _corrupt(where, "the tensor table is not a list of tensors")
    return table


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _span(entry: dict, key: str, where: str) -> int:
    span = entry.get(key)
    if not (isinstance(span, list) and len(span) == 2 and all(map(_is_count, span))):
        raise _corrupt(where, f"tensor {entry.get('name')!r} has no valid '{key}' span")
    return span[1]


def _check_table(table: list[dict], where: str) -> dict[str, int]:
    """Check every entry's sizes against its shape and dtype; returns the bytes each weight stream
    must hold. Refuses a table whose tensors add up to more than a package may hold."""
    sizes = dict.fromkeys(STREAMS[2:], 0)
    total = 0
    for entry in table:
        name = entry.get("name")
        shape, nbytes = entry.get("shape"), entry.get("bytes")
        if not (isinstance(shape, list) and all(map(_is_count, shape)) and _is_count(nbytes)
                and _is_count(entry.get("position")) and _is_count(entry.get("data_type"))
                and entry.get("itemsize") in (1, 2, 4, 8) and entry.get("encoding") in ("dense", "sparse")):
            raise _corrupt(where, f"tensor {name!r} has a malformed table entry")
        total += nbytes
        if total > MAX_WEIGHT_BYTES:
            raise EdgepackError(f"{where}: its tensors declare over {MAX_WEIGHT_BYTES:,} bytes of weights, more "
                                "than `edgepack pack` writes; refused",
                                hint="the file is corrupt or a decompression bomb")
        itemsize = entry["itemsize"]
        elements, remainder = divmod(nbytes, itemsize)
        if remainder:
            raise _corrupt(where, f"tensor {name!r}: {nbytes} bytes are not whole {itemsize}-byte items")
        count = elements
        if entry["encoding"] == "sparse":
            nnz = entry.get("nnz")
            if not _is_count(nnz) or nnz > elements:
                raise _corrupt(where, f"tensor {name!r}: {nnz!r} non-zeros in {elements} elements")
            deltas = _span(entry, "deltas", where)
            if deltas > nnz + elements // 255 + 1:
                raise _corrupt(where, f"tensor {name!r}: {deltas} position bytes for {nnz} non-zeros")
            sizes["deltas"] += deltas
            count = nnz
        if "codebook" in entry:
            index_dtype = entry.get("index_dtype")
            if not _is_count(entry["codebook"]) or not 1 <= entry["codebook"] <= 2**16 \
                    or index_dtype not in _INDEX_DTYPES:
                raise _corrupt(where, f"tensor {name!r} has a malformed codebook")
            centroids, indices = _span(entry, "centroids", where), _span(entry, "indices", where)
            if centroids != entry["codebook"] * itemsize or indices != count * np.dtype(index_dtype).itemsize:
                raise _corrupt(where, f"tensor {name!r}: codebook sizes do not fit {count} values")
            sizes["centroids"] += centroids
            sizes["indices"] += indices
        else:
            stream = "dense" if entry["encoding"] == "dense" else "values"
            length = _span(entry, stream, where)
            if length != count * itemsize:
                raise _corrupt(where, f"tensor {name!r}: {length} bytes stored for {count * itemsize}")
            sizes[stream] += length
    return sizes


def _check_entry_against_graph(entry: dict, initializers, where: str) -> None:
    """The table's tensor is the graph's initializer at its position, same name, dtype and shape,
    with no data of its own; its byte size follows from that shape and dtype."""
    position = entry["position"]
    if position >= len(initializers):
        raise _corrupt(where, f"tensor {entry['name']!r} points past the graph's initializers")
    init = initializers[position]
    if (init.name != entry["name"] or init.data_type != entry["data_type"] or list(init.dims) != entry["shape"]
            or init.raw_data or init.data_location == onnx.TensorProto.EXTERNAL):
        raise _corrupt(where, f"tensor {entry['name']!r} does not match the graph's initializer {init.name!r}")
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    except Exception:
        itemsize = None
    elements = int(np.prod(list(init.dims), dtype=object))
    if itemsize is not None and elements * itemsize != entry["bytes"]:
        raise _corrupt(where, f"tensor {init.name!r}: {entry['bytes']} bytes for shape {list(init.dims)} "
                              f"of {itemsize}-byte elements")


def _refuse_external_tensors(proto: onnx.ModelProto, where: str) -> None:
    """A package carries its weights in its own streams: a tensor anywhere in the graph (an
    initializer, an attribute, a subgraph, a function) that points at a file is refused, since
    unpacking would copy that file into the output model."""
    def graphs_of(attributes):
        for attr in attributes:
            yield from ([attr.g] if attr.HasField("g") else [])
            yield from attr.graphs

    def tensors(graph):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            yield from node_tensors(node)
            for sub in graphs_of(node.attribute):
                yield from tensors(sub)

    def node_tensors(node):
        for attr in node.attribute:
            yield from ([attr.t] if attr.HasField("t") else [])
            yield from attr.tensors
            for sparse in [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]:
                yield from (sparse.values, sparse.indices)

    def all_tensors():
        yield from tensors(proto.graph)
        for function in proto.functions:
            for node in function.node:
                yield from node_tensors(node)
                for sub in graphs_of(node.attribute):
                    yield from tensors(sub)

    for tensor in all_tensors():
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise EdgepackError(f"{where}: tensor '{tensor.name}' in the package's graph points at external file "
                                f"{location!r}; refused (a package's weights are in its own streams)",
                                hint="only unpack packages written by `edgepack pack`")


def _take(streams: dict, name: str, span: list[int]) -> bytes:
    return streams[name][span[0]:span[0] + span[1]]


def _decode(entry: dict, streams: dict, where: str) -> bytes:
    itemsize = entry["itemsize"]
    for key in ("dense", "values", "deltas", "centroids", "indices"):
        if key in entry and entry[key][0] + entry[key][1] > len(streams[key]):
            raise _corrupt(where, f"tensor {entry['name']!r}: its '{key}' span lies past the stream")
    if "codebook" in entry:
        try:
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(entry["data_type"])).newbyteorder("<")
        except Exception:
            raise _corrupt(where, f"tensor {entry['name']!r}: a codebook for a non-numeric type") from None
        if dtype.itemsize != itemsize:
            raise _corrupt(where, f"tensor {entry['name']!r}: item size {itemsize} for {dtype}")
        centroids = np.frombuffer(_take(streams, "centroids", entry["centroids"]), dtype)
        index = np.frombuffer(_take(streams, "indices", entry["indices"]), entry["index_dtype"])
        if index.size and int(index.max()) >= centroids.size:
            raise _corrupt(where, f"tensor {entry['name']!r}: a codebook index past its {centroids.size} entries")
        values = centroids[index]
    elif entry["encoding"] == "dense":
        return _unshuffle(_take(streams, "dense", entry["dense"]), itemsize)
    else:
        values = _unshuffle(_take(streams, "values", entry["values"]), itemsize)
    if entry["encoding"] == "dense":
        return values.tobytes()
    out = np.zeros(entry["bytes"], np.uint8)
    positions = decode_gaps(np.frombuffer(_take(streams, "deltas", entry["deltas"]), np.uint8))
    if positions.size != entry["nnz"] or (positions.size and int(positions[-1]) >= entry["bytes"] // itemsize):
        raise _corrupt(where, f"tensor {entry['name']!r}: its positions do not fit its {entry['nnz']} non-zeros")
    values = np.frombuffer(bytes(values), np.uint8).reshape(-1, itemsize)
    out.reshape(-1, itemsize)[positions] = values
    return out.tobytes()


def unpack(path: str | Path, output: str | Path) -> dict:
    """Write the model in an .epk file to `output` (ONNX); returns a short report."""
    started = time.perf_counter()
    model, header = unpack_model(path)
    from edgepack import outputs

    with outputs.command([path]):  # the package is never overwritten, also from the Python API
        io.save(model, output)
    return {"schema": "edgepack.unpack/1", "package": str(path), "output": str(output),
            "mode": header["mode"], "model_sha256": header["model_sha256"],
            "weights_sha256": header["weights_sha256"], "seconds": time.perf_counter() - started}
