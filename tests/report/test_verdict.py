"""The report's opening verdict (edgepack/report/verdict.py) on small run folders written here:
green when INT8 beats FP32 on every axis, a red line per worse axis with the causes the steps recorded."""
from __future__ import annotations

import json
import re

from edgepack.report.html import load_run, render
from edgepack.report.verdict import verdicts


def comparison(ratio: float, low: float, high: float, verdict: str) -> dict:
    return {"schema": "edgepack.check/1", "metric": "p50", "threshold": 0.05, "confidence": 0.99, "ratio": ratio,
            "ci": [low, high], "significant": True, "verdict": verdict, "regression": verdict == "slower",
            "statistic": "paired blocks", "current": {"value_ms": ratio}, "baseline": {"value_ms": 1.0}}


def run_folder(tmp_path, *, ratio, verdict, top1=(0.95, 0.949), int8_bytes=400, warnings=()):
    """model -> optimize (fp32, 1000 B) -> quantize (int8) -> compare; per target: profile int8 --vs fp32."""
    out = tmp_path / "out"
    (out / "x86-cpu").mkdir(parents=True)
    fp32, int8 = out / "optimize.onnx", out / "quantize.onnx"
    fp32.write_bytes(b"0" * 1000)
    int8.write_bytes(b"0" * int8_bytes)
    reports = {"quantize.json": {"schema": "edgepack.quantize/1", "warnings": list(warnings),
                                 "sensitivity": [{"node": "conv2", "op_type": "Conv", "sqnr_db": 12.5},
                                                 {"node": "fc", "op_type": "Gemm", "sqnr_db": 30.0}]},
               "compare.json": {"schema": "edgepack.compare/1", "accuracy": {"a": top1[0], "b": top1[1], "samples": 1000},
                                "outputs": [{"name": "logits", "sqnr_db": 21.5, "top1_agreement": 0.98}]},
               "x86-cpu/profile.json": {"schema": "edgepack.profile/1", "latency_ms": {"p50": ratio},
                                        "samples_ms": [], "vs": {"model": {"path": str(fp32)}},
                                        "comparison": comparison(ratio, ratio * 0.98, ratio * 1.02, verdict),
                                        "layers": [{"name": "q", "node": "q", "op_type": "QuantizeLinear", "time_ms": 0.4, "percent": 40.0},
                                                   {"name": "c", "node": "c", "op_type": "Conv", "time_ms": 0.6, "percent": 60.0}]}}
    for name, data in reports.items():
        (out / name).write_text(json.dumps(data))
    steps = [{"id": "optimize", "command": "optimize", "target": None, "status": "done", "seconds": 0.1,
              "artifact": str(fp32), "size_bytes": 1000, "report": None, "inputs": ["model"]},
             {"id": "quantize", "command": "quantize", "target": None, "status": "done", "seconds": 0.1,
              "artifact": str(int8), "size_bytes": int8_bytes, "report": str(out / "quantize.json"),
              "inputs": ["optimize"]},
             {"id": "compare", "command": "compare", "target": None, "status": "done", "seconds": 0.1,
              "artifact": None, "size_bytes": None, "report": str(out / "compare.json"),
              "inputs": ["optimize", "quantize"]},
             {"id": "profile", "command": "profile", "target": "x86-cpu", "status": "done", "seconds": 0.1,
              "artifact": None, "size_bytes": None, "report": str(out / "x86-cpu" / "profile.json"),
              "inputs": ["quantize"]}]
    (out / "run.json").write_text(json.dumps({"schema": "edgepack.run/1", "model": str(fp32), "targets": ["x86-cpu"],
                                              "model_size_bytes": 1000, "steps": steps, "versions": {}}))
    return out


def axes(verdict) -> dict[str, str]:
    return {a.name: a.status for a in verdict.axes}


def test_int8_slower_than_fp32_is_a_red_line_with_its_causes(tmp_path):
    out = run_folder(tmp_path, ratio=1.09, verdict="slower", top1=(0.95, 0.93),
                     warnings=["INT8 measured 1.09x slower than FP32 on this CPU (no VNNI)",
                               "opset 11 upgraded to 13"])
    (verdict,) = verdicts(load_run(out))
    assert axes(verdict) == {"latency": "worse", "accuracy": "worse", "size": "better"} and not verdict.green
    latency = verdict.axes[0]
    assert latency.sentence == "INT8 is slower than FP32"
    assert latency.line.startswith("latency slower: INT8/FP32 1.090x at p50, 99% interval [1.068, 1.112]")
    assert "quantize: INT8 measured 1.09x slower than FP32 on this CPU (no VNNI)" in latency.causes
    assert any("40% of the INT8 model's per-layer time" in c for c in latency.causes)
    accuracy = verdict.axes[1]
    assert "INT8 top-1 93.0% vs FP32 95.0% (-2.0 points" in accuracy.sentence
    assert any("--exclude conv2" in c for c in accuracy.causes)
    page = render(load_run(out))
    box = re.search(r'<div class="target-verdict (\w+)" data-target="x86-cpu">(.*?)</ul></div>', page, re.S)
    assert box.group(1) == "bad" and "worse than FP32 in latency, accuracy" in box.group(2)
    assert box.group(2).count('class="axis axis-worse"') == 2 and box.group(2).count("likely cause") == 3
    assert not any("VNNI" in c for c in accuracy.causes) and verdict.warnings == ["quantize: opset 11 upgraded to 13"]
    assert "warning: quantize: opset 11 upgraded to 13" in box.group(2)


def test_int8_better_on_every_axis_is_green(tmp_path):
    out = run_folder(tmp_path, ratio=0.5, verdict="faster")
    (verdict,) = verdicts(load_run(out))
    assert axes(verdict) == {"latency": "better", "accuracy": "same", "size": "better"} and verdict.green
    assert verdict.headline == "INT8 on x86-cpu: better than FP32 on every axis"
    assert all(not a.causes for a in verdict.axes)
    assert '<div class="target-verdict good" data-target="x86-cpu">' in render(load_run(out))


def test_a_hand_edited_comparison_is_left_out_not_a_crash(tmp_path):
    out = run_folder(tmp_path, ratio=1.2, verdict="slower")
    profile = out / "x86-cpu" / "profile.json"
    data = json.loads(profile.read_text())
    data["comparison"] = {"verdict": "slower", "ratio": "lots"}
    profile.write_text(json.dumps(data))
    (verdict,) = verdicts(load_run(out))
    assert "latency" not in axes(verdict)
    render(load_run(out))
