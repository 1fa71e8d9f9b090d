"""quantize: calibrate (or reuse ranges), insert QDQ per the target, check the result, and measure it
the way its runtime will run it. The one function under `edgepack quantize`, recipes and the demo.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import onnx_ir as ir

from edgepack.calib import Ranges, calibrate
from edgepack.errors import EdgepackError, UsageError
from edgepack.graph import copy_model
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.prepare import prepare
from edgepack.quant.qdq import QuantPolicy, insert_qdq, tensors_to_calibrate
from edgepack.targets import load_target
from edgepack.keywords import cli_keywords

logger = logging.getLogger(__name__)
SCHEMA = "edgepack.quantize/1"
EMULATED = ("QDQ math run by ONNX Runtime with graph optimizations off: the exact arithmetic TensorRT's "
            "explicit quantization specifies (TensorRT itself cannot run here)")


@dataclasses.dataclass
class QuantizeResult:
    """What `quantize` did. `model` is the quantized model (the input model, rewritten in place)."""

    model: ir.Model
    target: str
    method: str
    quantized: list[str]
    skipped: list[tuple[str, str]]                 # (node, why it stays float)
    ranges: Ranges | None = None
    sensitivity: list[dict] | None = None
    output_sqnr_db: float | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    runtime_check: Any = None                      # faithfulness.RuntimeCheck for ONNX Runtime targets
    accuracy_proxy: str | None = None              # how accuracy is measured where the runtime is absent
    output: str | None = None
    decisions: Any = None                          # quant/decisions.py Decisions: per layer, choice and reason
    speed: Any = None                              # quant/speed.py SpeedVerdict: INT8 vs FP32 on this CPU
    rounding: Any = None                           # rounding.RoundingReport: weights fitted to data

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "target": self.target, "method": self.method, "output": self.output,
                "quantized_nodes": self.quantized, "float_nodes": [n for n, _ in self.skipped],
                "float_reasons": dict(self.skipped), "sensitivity": self.sensitivity,
                "output_sqnr_db": self.output_sqnr_db,
                "check_qdq": {"ok": not self.problems, "problems": self.problems},
                "runtime_check": self.runtime_check.to_json() if self.runtime_check is not None else None,
                "accuracy_proxy": self.accuracy_proxy,
                "preprocess": self.ranges.preprocess if self.ranges is not None else None,
                "decisions": self.decisions.to_json() if self.decisions is not None else [],
                "speed": self.speed.to_json() if self.speed is not None else None,
                "warnings": [w for w in (self.speed.warning if self.speed is not None else None,
                                         self.runtime_check.message if self.runtime_check is not None else None) if w],
                "rounding": self.rounding.to_json() if self.rounding is not None else None}

    def text(self, explain: bool = False) -> str:
        return format_result(self.to_json(), explain=explain)


@cli_keywords
def quantize(model: ir.Model | str | os.PathLike, data=None, *, target="x86-cpu", ranges: Ranges | str | None = None,
             method: str | None = None, percentile: float = 99.99, exclude=(), per_tensor: bool = False,
             bias_correction: bool = True, limit: int | None = None, progress: bool = False,
             sensitivity: bool = False, max_error: float | None = None, min_agreement: float | None = None,
             runtime_check: bool = True, equalize: bool = True, preprocess=None,
             smoothquant: float | str | None = "auto", float_defaults: bool = True, placement: str | None = None,
             speed_check: bool = True, threads: int = 1, if_slower: str = "warn",
             weights: str = "int8", algorithm: str = "awq-gptq", block_size: int | None = None,
             rounding: str = "auto",
             output: str | os.PathLike | None = None) -> QuantizeResult:
    """QDQ post-training quantization of `model` (an onnx-ir Model, rewritten in place, or a path).

    Give calibration `data` (a calibration folder, .npz/.npy, or an iterable of {input: array}) or
    `ranges` (a Ranges or its file). `method` defaults to the target's. Mixed precision: `sensitivity`
    ranks layers by the output SQNR each costs alone; `max_error` (dB) / `min_agreement` (0..1) keep
    the most sensitive layers float until the output meets them. For ONNX Runtime targets the result
    is run as ORT runs it and compared with its QDQ math (`runtime_check`). `equalize` (with `data`)
    rescales the channels around depthwise convs first, an exact rewrite (quant/equalize.py). With
    `output`, the model is written there (atomically) once every check passed. `preprocess` (an
    `edgepack.calib.preprocess.Preprocess`) turns the stored samples into the model's input; it is
    recorded, with the target, in the model's metadata (quant/origin.py). `smoothquant`: migrate
    activation outliers into the weights with this alpha (0..1) before calibrating
    (quant/smoothquant.py); "auto" (the default) does so where an activation has outlier
    channels and data is given without ranges, None never; `float_defaults`: keep norms, masks, attention scores and detection-head
    outputs float (quant/float_rules.py). `weights`: "int8" (W8A8 as above), "int4" (weight-only
    INT4 MatMuls with `algorithm` rtn/gptq/awq and `block_size`, in the target's encoding; the
    `max_error` / `min_agreement` budget keeps sensitive layers at INT8) or "fp8" (E4M3 Q/DQ for
    FP8 GPUs), see quant/low_precision.py. `rounding` (with `data`, INT8 weights): fit the integer
    weights to the float model's layer outputs after insertion (quant/rounding.py): "nearest",
    "clip", "adaround", "bias", "block", a '+' list of those, "all", or "auto" (the measured default).
    Models below opset 13 are upgraded (or get per-tensor
    weights), and the result passes the checker and loads in ONNX Runtime before it is returned.
    `placement`: "measured" (ONNX Runtime targets' default with data: a weighted layer whose INT8
    kernel is slower than its float one on this CPU stays float, quant/speed.py) or "rules".
    `speed_check`: time the result against the float model (interleaved, `threads` threads, batch 1)
    and warn when INT8 is not faster; `if_slower` "error" refuses such a result (nothing written),
    "float" returns the float model instead (`result.model`; ModelOpt's autotune keeps its float
    baseline the same way). Every choice and its reason is in `result.decisions`.
    """
    from edgepack.quant.smoothquant import smooth
    from edgepack.quant.validate import prepare_opset, validate_quantized
    from edgepack import io

    target = load_target(target)
    if weights != "int8":
        from edgepack.quant.low_precision import quantize_low_precision

        return quantize_low_precision(model, data, target=target, weights=weights, algorithm=algorithm,
                                      block_size=block_size, method=method, percentile=percentile, exclude=exclude,
                                      max_error=max_error, min_agreement=min_agreement, limit=limit,
                                      progress=progress, preprocess=preprocess, ranges=ranges,
                                      smoothquant=smoothquant, output=output)
    if "int8" not in target.precisions:
        raise EdgepackError(f"target '{target.name}' has no fast INT8",
                            hint="build it with --precision fp16 instead of quantizing")
    if isinstance(ranges, (str, os.PathLike)):
        ranges = Ranges.load(ranges)
    if preprocess is None and ranges is not None and ranges.preprocess:  # how the ranges' data was prepared
        from edgepack.calib.preprocess import Preprocess

        preprocess = Preprocess.from_manifest(ranges.preprocess, "ranges: preprocess")
    from edgepack.calib.data import reusable, with_preprocess

    data = with_preprocess(reusable(data), preprocess)
    if data is None and ranges is None:
        raise UsageError("quantize needs calibration data or a ranges file",
                            hint="pass --data D (a calibration folder, .npz or .npy) or --ranges ranges.json")
    mixed = sensitivity or max_error is not None or min_agreement is not None
    if mixed and data is None:
        raise EdgepackError("--sensitivity/--max-error/--min-agreement need --data to measure the error",
                            hint="pass --data D")
    if not isinstance(model, ir.Model):
        model = io.load(model)
    method = method or target.calibration_method
    policy = QuantPolicy.for_target(target, per_tensor=per_tensor, bias_correction=bias_correction)
    prepare(model)
    policy = prepare_opset(model, policy)
    if target.is_tensorrt:  # inside the parser's opset window (onnx may have written a newer opset)
        from edgepack.quant.opset_window import fit_opset

        fit_opset(model, target)
    if smoothquant == "auto" and (data is None or ranges is not None):
        smoothquant = None  # ranges of the unsmoothed model: nothing to smooth against
    if smoothquant is not None:
        if data is None or ranges is not None:
            raise EdgepackError("smoothquant needs calibration data and recalibrates after smoothing",
                                hint="pass data and no ranges: ranges of the unsmoothed model no longer fit")
        smooth(model, data, alpha=smoothquant, limit=limit)
    if equalize and ranges is None:
        from edgepack.quant.equalize import balance_depthwise_outputs, equalize_depthwise_inputs

        equalize_depthwise_inputs(model, data)
        balance_depthwise_outputs(model, data)
    reference = copy_model(model) if (mixed or (runtime_check and not target.is_tensorrt)) else None
    from edgepack.quant.rounding import techniques_for

    rounding_on = bool(techniques_for(rounding, policy)) and (data is not None or rounding != "auto")
    teacher = (reference or copy_model(model)) if rounding_on else None
    if ranges is None:
        ranges = calibrate(copy_model(model), data, method=method, percentile=percentile, limit=limit,
                           symmetric=policy.symmetric_activations, progress=progress,
                           only=tensors_to_calibrate(model, policy))
    scores, sqnr = None, None
    if mixed:
        from edgepack.quant.sensitivity import keep_sensitive_float, layer_sensitivity

        scores = layer_sensitivity(model, ranges, policy, data, progress=progress)
    from edgepack.quant.decisions import Decisions
    from edgepack.quant import speed

    decisions = Decisions()
    placement = placement or ("rules" if target.is_tensorrt or data is None else "measured")
    if if_slower not in ("warn", "error", "float"):
        raise UsageError(f"--if-slower {if_slower!r}: must be warn, error or float", hint="pass --if-slower warn")
    if placement not in ("measured", "rules"):
        raise UsageError(f"--placement {placement!r}: must be measured or rules", hint="pass --placement measured")
    if placement == "measured" and target.is_tensorrt:
        raise EdgepackError(f"--placement measured: {target.name} is a TensorRT target, which cannot be timed here",
                            hint="use --placement rules (the default for TensorRT targets)")
    if placement == "measured" and data is None:
        raise EdgepackError("--placement measured needs --data to time the layers", hint="pass --data D")
    feeds = speed.first_feeds(model, data) if (placement == "measured" or (speed_check and not target.is_tensorrt
                                                                            and data is not None)) else None
    timing_reference = None if feeds is None else (reference if reference is not None else copy_model(model))
    if max_error is not None or min_agreement is not None:
        inserted, sqnr, _ = keep_sensitive_float(model, ranges, policy, data, scores, min_sqnr_db=max_error,
                                                 min_agreement=min_agreement, exclude=set(exclude))
        model = inserted.model
        speed.record_rules(decisions, inserted, "sensitivity: kept float until the error budget held")
    elif placement == "measured":
        inserted = speed.place_by_speed(model, ranges, policy, reference=timing_reference, feeds=feeds,
                                        exclude=set(exclude), float_defaults=float_defaults, decisions=decisions,
                                        target_name=target.name, threads=threads)
    else:
        inserted = insert_qdq(model, ranges, policy, exclude=set(exclude), float_defaults=float_defaults)
        speed.record_rules(decisions, inserted, "TensorRT: cannot be timed here" if target.is_tensorrt
                           else "placement by rules")
    rounded = None
    if rounding_on:  # ---- rounding stage (quant/rounding.py): weights fitted to the float model on data
        from edgepack.quant.rounding import DEFAULT_SAMPLES, round_weights

        budget = max_error is not None or min_agreement is not None
        unrounded = copy_model(model) if budget else None
        rounded = round_weights(model, teacher, data, policy, method=rounding, decisions=decisions,
                                progress=progress, limit=min(limit or DEFAULT_SAMPLES, DEFAULT_SAMPLES))
        if budget:  # the budget was met before rounding: it must still hold after it, or rounding goes
            from edgepack.quant.sensitivity import meets_budget

            held, sqnr_rounded = meets_budget(reference, model, data, max_error, min_agreement)
            if held:
                sqnr = sqnr_rounded
            else:
                logger.info("rounding broke the error budget on the data: nearest rounding kept")
                model, rounded = unrounded, None
    from edgepack.quant.origin import stamp_quantized

    stamp_quantized(model, target, preprocess, ranges)  # before the rules check: it reads the activation codes
    problems = check_qdq(model, target)
    if problems:
        raise EdgepackError(f"quantized model breaks {len(problems)} {target.name} rule(s); first: {problems[0]}",
                            hint="nothing was written; please report the model")
    validate_quantized(model)  # checker + ONNX Runtime load, before anything is written
    result = QuantizeResult(model, target.name, ranges.method, inserted.quantized, inserted.skipped, ranges,
                            scores, sqnr, problems, decisions=decisions)
    result.rounding = rounded
    if speed_check and feeds is not None:
        result.speed = _speed_verdict(timing_reference, model, feeds, threads)
        if result.speed.verdict == "slower" and if_slower == "error":
            raise EdgepackError(result.speed.warning.split(" hint:")[0] + "; nothing was written",
                                hint="quantize with --if-slower warn to keep it, or ship the FP32 model")
        if result.speed.verdict == "slower" and if_slower == "float":
            logger.warning("INT8 is %.2fx slower than FP32 on this CPU: the result is the float model",
                           result.speed.ratio)
            model = result.model = timing_reference
            for d in list(decisions):
                decisions.decide(d.node, d.op_type, "float", f"whole model: INT8 {result.speed.ratio:.2f}x slower "
                                 "than FP32 on this CPU (--if-slower float)")
            result.quantized, result.skipped = [], [(d.node, "INT8 slower than FP32") for d in decisions]
            runtime_check = False
        elif result.speed.warning:
            logger.warning("%s", result.speed.warning)
    model.metadata_props["edgepack.decisions"] = decisions.metadata()
    if target.is_tensorrt:
        result.accuracy_proxy = EMULATED
    elif runtime_check:
        from edgepack.quant.faithfulness import check_runtime

        result.runtime_check = check_runtime(model, data, float_model=reference, target=target)
        if not result.runtime_check.ok:
            logger.warning("%s", result.runtime_check.message)
    if output is not None:
        result.output = str(io.save(model, output))
    return result


def _speed_verdict(float_model: ir.Model, model: ir.Model, feeds: dict, threads: int):
    """INT8 vs FP32 latency as ORT deploys both, with the fusion report for the likely cause."""
    import tempfile
    from pathlib import Path

    from edgepack import io
    from edgepack.quant.ort_fusion import fusion_report
    from edgepack.quant.speed import latency_verdict

    with tempfile.TemporaryDirectory(prefix="edgepack-verdict-") as folder:
        fp = io.save(float_model, Path(folder) / "fp32.onnx")
        q = io.save(model, Path(folder) / "int8.onnx")
        return latency_verdict(fp, q, feeds, threads=threads, fusion_of=lambda: fusion_report(q))


def format_result(report: dict, *, explain: bool = False) -> str:
    """The text `edgepack quantize` prints for a `QuantizeResult.to_json()`."""
    lines = [f"{len(report['quantized_nodes'])} nodes quantized for {report['target']} "
             f"({report['method']}{'' if report['method'].startswith(('int4', 'fp8')) else ' ranges'}), "
             f"{len(report['float_nodes'])} left in float; "
             f"check-qdq: {'ok' if report['check_qdq']['ok'] else 'FAILED'}"]
    for node, why in report["float_reasons"].items():
        lines.append(f"  float: {node} ({why})")
    if report["sensitivity"]:
        lines += ["", f"{'most sensitive layers':<40} {'op':<10} {'SQNR dB':>9}"]
        lines += [f"{r['node'][:40]:<40} {r['op_type']:<10} {r['sqnr_db']:>9.2f}" for r in report["sensitivity"][:10]]
    if report.get("rounding") and report["rounding"]["layers"]:
        r = report["rounding"]
        lines.append(f"rounding {'+'.join(r['techniques'])}: {len(r['layers'])} layers fitted on {r['samples']} "
                     f"samples in {r['seconds']:.1f} s")
    if report["output_sqnr_db"] is not None:
        lines.append(f"output SQNR {report['output_sqnr_db']:.2f} dB")
    check = report["runtime_check"]
    if check is not None:
        verdict = "matches its QDQ math" if check["ok"] else "DIFFERS from its QDQ math"
        quant = (f", quantization error {check['quantization_sqnr_db']:.1f} dB"
                 if check["quantization_sqnr_db"] is not None else "")
        lines.append(f"runtime check: ONNX Runtime's fused INT8 {verdict} (SQNR {check['runtime_sqnr_db']:.1f} dB"
                     f"{quant}; {check['samples']} samples; CPU {check['cpu_flags']})")
    if report.get("speed"):
        from edgepack.quant.speed import SpeedVerdict

        verdict = SpeedVerdict(**report["speed"])
        lines.append(verdict.line())
        if verdict.warning:
            lines.append("warning: " + verdict.warning)
    if explain and report.get("decisions"):
        from edgepack.quant.decisions import Decisions

        lines += ["", Decisions.from_json(report["decisions"]).text()]
    if report["accuracy_proxy"]:
        lines.append("accuracy on this machine = " + report["accuracy_proxy"].split(":")[0])
    if report["output"]:
        lines.append(f"wrote {report['output']}")
    return "\n".join(lines)
