"""Benchmark: is INT8 faster than FP32, and as accurate, as ONNX Runtime deploys it? Side by side with
ONNX Runtime's own `quantize_static`, every model and CPU target in one run.

For each model: the FP32 model and every INT8 artifact are timed in ONE process, in interleaved
blocks (ABBA, FP32 against each INT8 model in turn), batch 1, with 1 thread and with all threads;
the table gives INT8 latency / FP32 latency (p10 of each; < 1 = faster) with its 99 % block-bootstrap
interval. Accuracy is measured as ORT runs the artifact (all optimizations: fused integer kernels):
top-1 where the data has labels, top-1 agreement with FP32 otherwise (ShuffleNetV2 on COCO), box
recall/precision against the FP32 boxes for the code-built detector. Fusion: integer kernels / weight
DQs run per inference / float weighted layers in ORT's optimized graph.

Columns: edgepack for each CPU target (its default options: measured placement) and ORT
quantize_static QDQ U8S8 per-tensor and per-channel (MinMax, its default), same calibration data.
A target meant for another CPU class than this one still runs here: its latency is the one this
CPU gives it (x86-cpu runs U8S8 with 7-bit weights: exact everywhere, VNNI speed here).

    python3 scripts/bench/bench_latency.py [--models digits,mnist,resnet20,shufflenet,detector]
        [--calib 200] [--eval 1000] [--seconds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_quantize import SHARED, load_data  # noqa: E402
from edgepack import io, runtime  # noqa: E402
from edgepack.cpu import int8_summary  # noqa: E402

TARGETS = ("x86-cpu", "x86-cpu-avx512", "x86-cpu-vnni")


def detector_data(n_calib: int, n_eval: int):
    """The code-built YOLOX-style detector (tests/quant/detector.py) on the COCO images."""
    from tests.quant import detector as det

    images = det.coco_images(SHARED / "data/coco_val2017_100")
    folder = Path(tempfile.mkdtemp(prefix="bench-latency-det-"))
    model = det.build(images=images[:8])
    path = folder / "detector.onnx"
    io.save(model, path)
    return path, "images", images[:n_calib], images[n_calib:n_calib + n_eval], None


def quantize_edgepack(path, name, x, out, target):
    from edgepack.quant import quantize

    data = [{name: x[i:i + 1]} for i in range(len(x))]
    result = quantize(str(path), data, target=target, runtime_check=False, speed_check=False, output=out)
    return result


class _Singles:
    """ORT's CalibrationDataReader protocol, one sample at a time (fixed-batch models take only that)."""

    def __init__(self, name, x):
        self.items = iter([{name: x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def quantize_ort(path, name, x, out, per_channel):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    try:
        quantize_static(str(path), str(out), _Singles(name, x), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel)
    except ValueError as exc:  # ORT per-channel on the MNIST CNN: see ../shared/data/SOURCES.md
        return f"fails: {str(exc)[:40]}"
    try:
        runtime.session(str(out))
    except Exception:  # per-channel on an opset-11 model: an `axis` DequantizeLinear opset 11 lacks
        return "writes an invalid model"
    return ""


def accuracy(path, name, x, labels, reference=None, detector=False):
    sess = runtime.session(str(path))
    if detector:
        from tests.quant import detector as det

        boxes = det.detect(sess, x)
        if reference is None:
            return boxes, None
        recall, precision, _, _ = det.agreement(reference, boxes)
        return boxes, f"{recall:.2f}/{precision:.2f}"
    pred = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0].argmax(1) for i in range(len(x))])
    if labels is not None:
        return pred, f"{100 * (pred == labels).mean():.1f}%"
    return pred, f"{100 * (pred == reference).mean():.0f}% agree" if reference is not None else None


def fusion(path) -> str:
    from edgepack.quant.ort_fusion import fusion_report

    r = fusion_report(path)
    return f"{r.integer_kernels}/{len(r.dq_on_constants)}/{len(r.float_weighted)}"


def ratios(fp32, artifacts: dict, feeds, threads: int, seconds: float) -> dict:
    from edgepack.profile.stats import ratio_interval
    from edgepack.quant.speed import time_pair

    out = {}
    for key, path in artifacts.items():
        q_ms, f_ms = time_pair(str(path), str(fp32), feeds, threads=threads, seconds=seconds)
        r, lo, hi = ratio_interval([q_ms], [f_ms], percentile=10.0, n_resamples=500)
        out[key] = (r, lo, hi, float(np.percentile(f_ms, 10)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,mnist,resnet20,shufflenet,detector")
    parser.add_argument("--calib", type=int, default=200)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    os.environ.setdefault("EDGEPACK_SPEED_SECONDS", "1")
    print(f"CPU flags: {int8_summary()}; cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")
    columns = list(TARGETS) + ["ORT per-tensor", "ORT per-channel"]
    for model in args.models.split(","):
        if model == "detector":
            path, name, xc, xe, labels = detector_data(min(args.calib, 50), 50)
        else:
            path, name, xc, xe, labels = load_data(model, args.calib, args.eval)
        folder = Path(tempfile.mkdtemp(prefix=f"bench-latency-{model}-"))
        artifacts, notes = {}, {}
        for target in TARGETS:
            out = folder / f"{target}.onnx"
            result = quantize_edgepack(path, name, xc, out, target)
            artifacts[target] = out
            notes[target] = f"{len([d for d in result.decisions if d.choice == 'float'])} float"
        for per_channel, key in ((False, "ORT per-tensor"), (True, "ORT per-channel")):
            out = folder / f"ort{int(per_channel)}.onnx"
            failed = quantize_ort(path, name, xc, out, per_channel)
            if failed:
                notes[key] = failed
            else:
                artifacts[key] = out
        detector = model == "detector"
        reference, fp_acc = accuracy(path, name, xe, labels, detector=detector)
        feeds = {name: xe[:1]}
        timing = {t: ratios(path, artifacts, feeds, t, args.seconds) for t in (1, 0)}
        print(f"\n## {model}: FP32 {timing[1][next(iter(artifacts))][3]:.3f} ms (1 thread), "
              f"FP32 accuracy {fp_acc or '(reference)'}; {len(xc)} calibration / {len(xe)} evaluation samples")
        print(f"| {'':<18} | " + " | ".join(f"{c:<20}" for c in columns) + " |")
        print("|" + "---|" * (len(columns) + 1))
        rows = {"INT8/FP32, 1 thread": lambda k: "{:.2f} [{:.2f}, {:.2f}]".format(*timing[1][k][:3]),
                "INT8/FP32, all": lambda k: "{:.2f} [{:.2f}, {:.2f}]".format(*timing[0][k][:3]),
                "accuracy": lambda k: accuracy(artifacts[k], name, xe, labels, reference, detector)[1],
                "fused int/wDQ/float": lambda k: fusion(artifacts[k]),
                "edgepack float layers": lambda k: notes.get(k, "")}
        for label, cell in rows.items():
            values = [cell(c) if c in artifacts else notes.get(c, "-") for c in columns]
            print(f"| {label:<18} | " + " | ".join(f"{v:<20}" for v in values) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
