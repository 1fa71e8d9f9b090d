"""Package sizes and speeds: raw ONNX, gzip -9, xz -9, edgepack lossless, edgepack codebook.

Models: the shared ResNet-20 (float32), the same pruned to 90% element sparsity, and that pruned
model with per-channel INT8 weights in QDQ form (int8 initializers + DequantizeLinear), the form a
quantizer leaves them in. All numbers are measured side by side in one run.

    python scripts/bench/bench_pack.py [--model PATH] [--bits 4]
"""
from __future__ import annotations

import argparse
import gzip
import lzma
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgepack import io  # noqa: E402
from edgepack.pack.format import _decompress, pack, read_header, unpack_model  # noqa: E402
from edgepack.passes.prune import PruneWeightsPass  # noqa: E402
from tests.compress.util import int8_weight_qdq  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return result, best


def huffman_bytes(data: bytes) -> int:
    """Size of `data` under an order-0 byte Huffman code (as in Deep Compression), plus a 256-byte
    table of code lengths: computed from the code lengths, not by encoding."""
    import heapq

    import numpy as np

    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
    heap = [(int(c), i, (s,)) for i, (s, c) in enumerate(enumerate(counts)) if c]
    if len(heap) <= 1:
        return 256 + (len(data) + 7) // 8
    lengths = dict.fromkeys(range(256), 0)
    heapq.heapify(heap)
    tie = 256
    while len(heap) > 1:
        c1, _, s1 = heapq.heappop(heap)
        c2, _, s2 = heapq.heappop(heap)
        for symbol in s1 + s2:
            lengths[symbol] += 1
        heapq.heappush(heap, (c1 + c2, tie, s1 + s2))
        tie += 1
    return 256 + (sum(int(counts[s]) * lengths[s] for s in range(256)) + 7) // 8


def stream_rows(name: str, epk: Path) -> list[tuple]:
    header, payload = read_header(epk)
    rows = []
    for entry in header["streams"]:
        if not entry["raw_length"] or entry["name"] in ("graph", "table"):
            continue
        raw = _decompress(entry["codec"], payload[entry["offset"]:entry["offset"] + entry["length"]], "")
        rows.append((name, entry["name"], entry["raw_length"], huffman_bytes(raw), entry["codec"],
                     entry["length"]))
    return rows


def measure(name: str, path: Path, bits: int, folder: Path) -> list[tuple]:
    raw = path.read_bytes()
    mb = len(raw) / 1e6
    rows = [(name, "raw ONNX", len(raw), None, None)]
    packed, seconds = timed(lambda: gzip.compress(raw, 9))
    _, back = timed(lambda: gzip.decompress(packed))
    rows.append((name, "gzip -9", len(packed), mb / seconds, mb / back))
    packed, seconds = timed(lambda: lzma.compress(raw, preset=9))
    _, back = timed(lambda: lzma.decompress(packed))
    rows.append((name, "xz -9", len(packed), mb / seconds, mb / back))
    for label, codebook in (("edgepack lossless", None), (f"edgepack codebook {bits}-bit", bits)):
        out = folder / f"{path.stem}.{codebook}.epk"
        report, seconds = timed(lambda: pack(path, out, codebook_bits=codebook), repeat=1)
        _, back = timed(lambda: unpack_model(out))
        rows.append((name, label, report["packed_bytes"], mb / seconds, mb / back))
        STREAM_ROWS.extend(stream_rows(f"{name}, {label.split()[1]}", out))
    return rows


STREAM_ROWS: list[tuple] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO.parent / "shared/models/resnet20_cifar10.onnx"))
    parser.add_argument("--bits", type=int, default=4, help="codebook bits (default 4: 16 entries)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = io.load(args.model)
        original = io.save(model, folder / "fp32.onnx")
        PruneWeightsPass(sparsity=0.9)(model)
        pruned = io.save(model, folder / "fp32-pruned90.onnx")
        int8_weight_qdq(model)
        quantized = io.save(model, folder / "int8-pruned90.onnx")
        rows = []
        for name, path in (("fp32", original), ("fp32 pruned 90%", pruned), ("int8 pruned 90%", quantized)):
            rows += measure(name, path, args.bits, folder)
    base = {name: size for name, label, size, _, _ in rows if label == "raw ONNX"}
    fp32 = base["fp32"]
    print(f"model: {args.model}")
    print(f"{'model':<17} {'format':<22} {'bytes':>10} {'vs raw':>7} {'vs fp32':>8} {'pack MB/s':>10} {'unpack MB/s':>12}")
    for name, label, size, pack_speed, unpack_speed in rows:
        speed = "" if pack_speed is None else f"{pack_speed:10.1f} {unpack_speed:12.1f}"
        print(f"{name:<17} {label:<22} {size:>10,} {base[name] / size:>6.1f}x {fp32 / size:>7.1f}x {speed}")
    print("MB/s: MB of raw ONNX per second (best of 3 for gzip/xz and unpack; one pack run).")
    print()
    print("entropy coding of the edgepack streams: order-0 Huffman (Deep Compression) vs the codec chosen")
    print(f"{'package':<28} {'stream':<10} {'raw':>10} {'huffman':>10} {'chosen':>10} {'codec':<6}")
    for name, stream, raw, huff, codec, length in STREAM_ROWS:
        print(f"{name:<28} {stream:<10} {raw:>10,} {huff:>10,} {length:>10,} {codec:<6}")


if __name__ == "__main__":
    main()
