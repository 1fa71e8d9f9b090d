"""The verdict a run folder's report opens with: per target, is the optimized artifact better than
its FP32 model on every axis?

    latency   the INT8/FP32 ratio and its interval: a `profile --vs` step (timed interleaved in one
              process, the way to measure it), else two separate profile steps (checked the same
              way, and marked as separate runs), else a `latency` record a quantize/build step wrote
    accuracy  top-1 of both on the labelled set (else top-1 agreement) and the output SQNR, from a
              compare step of FP32 against INT8; worse (better) when top-1 drops (gains) by more
              than ACCURACY_TOLERANCE points, or without labels when agreement is under MIN_AGREEMENT
    size      the artifact's bytes against the FP32 artifact's
    check     every `check` step of the target: its verdict line

Each axis is "better", "same" or "worse"; the target is green when none is worse and latency and
size are better (accuracy within the tolerance counts as not worse). Each worse axis gets its likely causes: the `warnings` that the steps upstream
recorded (in their JSON report, step manifest or artifact manifest), and for latency the share
of time the INT8 profile spent in Quantize/Dequantize and layout nodes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ACCURACY_TOLERANCE = 0.5  # top-1 points lost before accuracy counts as worse
MIN_AGREEMENT = 0.99      # without labels: top-1 agreement with FP32 below this is worse
OVERHEAD_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ReorderInput",
                "ReorderOutput", "Transpose", "Cast"}


@dataclass
class Axis:
    name: str                # latency, accuracy, size, check
    status: str              # better, same, worse, unknown
    sentence: str            # "INT8 is slower than FP32"
    line: str = ""           # the numbers, in the verdict vocabulary
    causes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"axis": self.name, "status": self.status, "sentence": self.sentence, "line": self.line,
                "causes": self.causes}


@dataclass
class TargetVerdict:
    target: str | None
    axes: list[Axis]
    warnings: list[str] = field(default_factory=list)  # recorded by quantize/build, of no one axis

    @property
    def green(self) -> bool:
        by = {a.name: a.status for a in self.axes}
        return (not any(a.status == "worse" for a in self.axes) and by.get("latency") == "better"
                and by.get("size") == "better")

    @property
    def headline(self) -> str:
        where = f" on {self.target}" if self.target else ""
        worse = [a.name for a in self.axes if a.status == "worse"]
        if self.green:
            return f"INT8{where}: better than FP32 on every axis"
        if worse:
            return f"INT8{where}: worse than FP32 in {', '.join(worse)}"
        return f"INT8{where}: not worse than FP32, but not better on every axis"

    def to_json(self) -> dict:
        return {"target": self.target, "green": self.green, "headline": self.headline,
                "axes": [a.to_json() for a in self.axes], "warnings": self.warnings}

    def text(self) -> str:
        marks = {"better": "+", "same": "=", "worse": "!", "unknown": "?"}
        lines = [f"verdict: {self.headline}"]
        for a in self.axes:
            lines.append(f"  {marks[a.status]} {a.name}: {a.sentence}" + (f" ({a.line})" if a.line else ""))
            lines += [f"      likely cause: {c}" for c in a.causes]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def verdicts(data) -> list[TargetVerdict]:
    """One TargetVerdict per target of the run (`data`: report.html.RunData); none without INT8."""
    if not any(s["command"] == "quantize" for s in data.steps):
        return []
    out = []
    for target in data.run.get("targets") or [None]:
        axes = [a for a in (_latency(data, target), _accuracy(data, target), _size(data, target)) if a]
        axes += _checks(data, target)
        if axes:
            out.append(TargetVerdict(target, axes, _warnings(data, target, ("quantize", "build"))))
    return out


# ---------------------------------------------------------------- axes

def _by_artifact(data) -> dict[str, dict]:
    return {str(Path(s["artifact"]).resolve()): s for s in data.steps if s.get("artifact")}


def _latency(data, target) -> Axis | None:
    from edgepack.profile.verdict import describe

    profiles = [(s, r) for s, r in data.of("profile") if s["target"] == target and "latency_ms" in r]
    artifacts = _by_artifact(data)
    for step, report in profiles:  # profile INT8 --vs FP32: interleaved
        comparison, vs = report.get("comparison"), report.get("vs") or {}
        vs_step = artifacts.get(str(Path((vs.get("model") or {}).get("path") or "-").resolve()))
        if (isinstance(comparison, dict) and vs_step and data.precision(step["id"]) == "int8"
                and data.precision(vs_step["id"]) == "fp32" and _valid(comparison)):
            return _latency_axis(comparison, describe(comparison, label="INT8/FP32"), data, target, report)
    fp32 = next(((s, r) for s, r in profiles if data.precision(s["id"]) == "fp32"), None)
    int8 = next(((s, r) for s, r in profiles if data.precision(s["id"]) == "int8"), None)
    if fp32 and int8:
        from edgepack.errors import EdgepackError
        from edgepack.profile.regression import check_regression

        try:
            comparison = check_regression(int8[1], fp32[1], force=True, metric="p50", n_resamples=500)
        except (EdgepackError, KeyError, TypeError, ValueError):
            comparison = None
        if comparison:
            line = describe(comparison, label="INT8/FP32") + "; separate profiles, not interleaved"
            return _latency_axis(comparison, line, data, target, int8[1])
    for step, report in _upstream_reports(data, target):  # a record quantize/build wrote, if any
        record = report.get("latency") if isinstance(report.get("latency"), dict) else None
        if record and _valid(record):
            return _latency_axis(record, describe(record, label="INT8/FP32"), data, target, None)
    return None


def _valid(record: dict) -> bool:
    try:
        return (record["verdict"] in ("slower", "faster", "same") and float(record["ratio"]) > 0
                and len(record["ci"]) == 2 and "metric" in record and "threshold" in record
                and "confidence" in record)
    except (KeyError, TypeError, ValueError):
        return False


def _latency_axis(comparison: dict, line: str, data, target, int8_profile: dict | None) -> Axis:
    verdict = comparison["verdict"]
    status = {"slower": "worse", "faster": "better"}.get(verdict, "same")
    sentence = {"slower": "INT8 is slower than FP32", "faster": "INT8 is faster than FP32"}.get(
        verdict, "INT8 is no faster than FP32 (within the threshold)")
    causes = _warnings(data, target, ("quantize", "build"), "latency") if status != "better" else []
    if status != "better" and int8_profile:
        causes += _overhead(int8_profile)
    return Axis("latency", status, sentence, line, causes)


def _overhead(profile: dict) -> list[str]:
    """The share of the INT8 profile's per-layer time in Q/DQ and layout nodes."""
    layers = [l for l in profile.get("layers") or [] if isinstance(l, dict)]
    total = sum(float(l.get("time_ms") or 0) for l in layers)
    if not layers or total <= 0:
        return []
    spent = sum(float(l.get("time_ms") or 0) for l in layers if str(l.get("op_type")) in OVERHEAD_OPS)
    share = spent / total
    if share < 0.05:
        return []
    return [f"{share:.0%} of the INT8 model's per-layer time is spent in Quantize/Dequantize and layout "
            "nodes (per-layer profile): the model is too small, or too little of it is INT8, for the integer "
            "kernels to pay for the conversions"]


def _accuracy(data, target) -> Axis | None:
    for step, report in data.of("compare"):
        if step.get("target") not in (None, target):
            continue
        refs = step.get("inputs", [])
        if len(refs) != 2 or [data.precision(r) for r in refs] != ["fp32", "int8"]:
            continue
        outputs = [o for o in report.get("outputs") or [] if isinstance(o, dict)]
        sqnrs = [o["sqnr_db"] for o in outputs if isinstance(o.get("sqnr_db"), (int, float))]
        sqnr = f", output SQNR {min(sqnrs):.1f} dB" if sqnrs else ""
        accuracy = report.get("accuracy")
        causes = []
        if isinstance(accuracy, dict) and isinstance(accuracy.get("a"), (int, float)):
            a, b = 100 * accuracy["a"], 100 * accuracy["b"]
            drop = a - b
            status = "worse" if drop > ACCURACY_TOLERANCE else "better" if drop < -ACCURACY_TOLERANCE else "same"
            sentence = (f"INT8 top-1 {b:.1f}% vs FP32 {a:.1f}% ({-drop:+.1f} points"
                        + (f", more than the {ACCURACY_TOLERANCE:g} tolerated)" if status == "worse" else ")"))
            line = f"{accuracy.get('samples', '?')} labelled samples{sqnr}"
        else:
            agreement = [o["top1_agreement"] for o in outputs if isinstance(o.get("top1_agreement"), (int, float))]
            if not agreement and not sqnrs:
                continue
            worst = min(agreement) if agreement else None
            status = "worse" if worst is not None and worst < MIN_AGREEMENT else "same"
            sentence = (f"INT8 agrees with FP32 on {100 * worst:.1f}% of top-1 answers" if worst is not None
                        else "no labels or classes: SQNR only")
            line = sqnr.lstrip(", ")
        if status == "worse":
            causes = _warnings(data, target, ("quantize",), "accuracy") + _sensitive(data)
        return Axis("accuracy", status, sentence, line, causes)
    return None


def _sensitive(data) -> list[str]:
    for _, report in data.of("quantize"):
        ranked = sorted((s for s in report.get("sensitivity") or [] if isinstance(s, dict)
                         and isinstance(s.get("sqnr_db"), (int, float))), key=lambda s: s["sqnr_db"])
        if ranked:
            worst = ranked[0]
            return [f"the most sensitive layer is {worst.get('node')} ({worst['sqnr_db']:.1f} dB alone in INT8): "
                    f"try --exclude {worst.get('node')}"]
    return []


def _size(data, target) -> Axis | None:
    fp32 = int8 = None
    for step in data.steps:
        if not step.get("size_bytes") or step.get("target") not in (None, target):
            continue
        if step["command"] in ("optimize", "prune", "compress", "quantize", "build"):
            if data.precision(step["id"]) == "int8":
                int8 = step["size_bytes"]
            else:
                fp32 = step["size_bytes"]
    fp32 = fp32 or data.run.get("model_size_bytes")
    if not fp32 or not int8:
        return None
    ratio = int8 / fp32
    status = "better" if ratio < 1 else "worse" if ratio > 1 else "same"
    return Axis("size", status, f"INT8 {int8 / 1024:.1f} KiB vs FP32 {fp32 / 1024:.1f} KiB",
                f"INT8/FP32 {ratio:.3f}x",
                _warnings(data, target, ("quantize", "build"), "size") if status == "worse" else [])


def _checks(data, target) -> list[Axis]:
    from edgepack.profile.verdict import describe

    out = []
    for step, report in data.of("check"):
        if step["target"] != target or not _valid(report):
            continue
        verdict = report["verdict"]
        status = {"slower": "worse", "faster": "better"}.get(verdict, "same")
        out.append(Axis("check", status, f"{step['id']}: {verdict}" + (" (the gate fails)" if status == "worse"
                                                                        else " (the gate passes)"),
                        describe(report)))
    return out


# ---------------------------------------------------------------- causes

def _upstream_reports(data, target) -> list[tuple[dict, dict]]:
    return [(s, r) for command in ("quantize", "build") for s, r in data.of(command)
            if s.get("target") in (None, target)]


# which axis a recorded warning speaks of (a warning that names none is shown under the headline)
ABOUT = {"latency": ("latency", "slower", "faster", "speed", " ms", "kernel", "vnni", "fallback", "throughput"),
         "accuracy": ("accuracy", "sqnr", "agreement", "top-1", "range", "calibrat", "saturat", "overflow", "clip",
                      "error", "sensitiv"),
         "size": ("size", "bytes", "kib", "mib")}


def _warnings(data, target, commands: tuple[str, ...], about: str | None = None) -> list[str]:
    """The `warnings` the steps of `commands` recorded (a list of strings, or of {message}), wherever
    they put them: their JSON report, their step manifest (DIR/<id>.step.json), their artifact's
    manifest; `about`: only those that speak of that axis, None: those that speak of no axis."""
    found: list[str] = []
    for step in data.steps:
        if step["command"] not in commands or step.get("target") not in (None, target):
            continue
        sources = [data.reports.get((step["id"], step.get("target")))]
        folder = data.folder / (step.get("target") or "")
        sources.append(_read(folder / f"{step['id']}.step.json", data.folder))
        if step.get("artifact"):
            sources.append(_read(folder / f"{Path(str(step['artifact'])).name}.manifest.json", data.folder))
        for source in sources:
            items = source.get("warnings") if isinstance(source, dict) else None
            for item in items if isinstance(items, list) else []:
                text = item if isinstance(item, str) else (item.get("message") if isinstance(item, dict) else None)
                label = f"{step['id']}: {text}" if isinstance(text, str) else None
                axes = [a for a, words in ABOUT.items() if any(w in (text or "").lower() for w in words)]
                if label and label not in found and ((about in axes) if about else not axes):
                    found.append(label)
    return found[:5]


def _read(path: Path, folder: Path | None = None) -> dict | None:
    """A JSON file inside the run folder `folder`, or None (outside it, missing, unreadable, not an object)."""
    try:
        if folder is not None and not path.resolve().is_relative_to(folder.resolve()):
            return None
        value = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
