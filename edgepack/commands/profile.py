"""`edgepack profile` and `edgepack check`: latency you can gate CI on."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import UsageError
from edgepack.keywords import cli_keywords

METRICS = ("p1", "p5", "p10", "p50", "p90", "p95", "p99")


@dataclass
class ProfileReport(CommandResult):
    """JSON `edgepack.profile/1` (`result`, with `vs` and `comparison` after --vs)."""

    result: dict[str, Any] = field(metadata=NOT_JSON)
    baseline: dict[str, Any] | None = field(default=None, metadata=NOT_JSON)
    comparison: dict[str, Any] | None = field(default=None, metadata=NOT_JSON)
    history_path: str | None = field(default=None, metadata=NOT_JSON)
    from_model: dict = field(default_factory=dict, metadata=NOT_JSON)  # defaults read from the artifact

    def to_json(self) -> dict[str, Any]:
        return self.result

    def text(self, top: int = 10) -> str:
        from edgepack.profile.profiler import format_profile
        from edgepack.profile.regression import format_check

        from edgepack.quant.origin import describe_defaults

        text = "\n".join([*describe_defaults(self.from_model), format_profile(self.result, top)])
        if self.baseline is not None:
            text += ("\n\nvs " + self.baseline["model"]["name"] + "\n" + format_profile(self.baseline, top)
                     + "\n\n" + format_check(self.comparison))
        if self.history_path:
            text += f"\nrecorded in {self.history_path}"
        return text

    @property
    def latency_ms(self) -> dict[str, float]:
        return self.result["latency_ms"]


def parse_cpus(text: str) -> list[int]:
    """'0,2-3' -> [0, 2, 3]."""
    cpus = set()
    try:
        for part in str(text).split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise UsageError(f"--affinity {text!r}: not a CPU list", hint="write --affinity 0 or 0,1 or 0-3") from None
    return sorted(cpus)


@cli_keywords
def profile_artifact(model: str | os.PathLike, target=None, *, runs: int | str | None = None,
            duration: float | str | None = None, warmup: int | str = "200ms", batch: int | None = None,
            threads: int | None = None, affinity: str | list[int] | None = None, data=None,
            shapes: str | None = None, vs: str | os.PathLike | None = None, layer_runs: int = 20,
            history_db: str | os.PathLike | None = None, history: bool = True,
            progress: bool = True) -> ProfileReport:
    """Time an ONNX model / ORT artifact or a TensorRT engine.

    `runs` (a count) or `duration` ("3s", "500ms", or seconds as a number; default 3 s);
    `warmup` runs or time. `vs`: a second artifact timed interleaved with `model` in this process,
    and the check of `model` against it (p50). Each result goes to the history database
    (`history_db`, $EDGEPACK_HISTORY or ~/.cache/edgepack/history.sqlite) unless `history=False`.
    The lower-level functions are `edgepack.profile_model` and `edgepack.profile_pair`. Without
    `target` (or preprocessing for `data`), those recorded for the artifact (its build manifest, or
    a quantized model's metadata) are used, and the text says so.
    """
    from edgepack.profile.confirm import interleaved_report
    from edgepack.quant.origin import recorded_defaults, recorded_in_file

    from edgepack.profile.history import History
    from edgepack.profile.profiler import ProfileOptions, parse_shapes, profile_model, profile_pair
    from edgepack.profile.timing import DEFAULT_BUDGET_TEXT, Budget

    from edgepack.limits import MAX_BATCH, MAX_LAYER_RUNS, check_count

    if batch is not None:  # documented maxima (docs/security.md), before any work
        check_count(batch, "--batch", MAX_BATCH, minimum=1)
    check_count(max(0, layer_runs) if isinstance(layer_runs, int) else layer_runs, "--layer-runs", MAX_LAYER_RUNS)
    if runs is not None and duration is not None:
        raise UsageError("--runs and --duration exclude each other", hint="give one of them")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        duration = f"{duration}s"
    budget = (Budget.parse(str(runs), "--runs") if runs is not None
              else Budget.parse(duration or DEFAULT_BUDGET_TEXT, "--duration"))
    if runs is not None and budget.runs is None:
        raise UsageError(f"--runs {runs}: a number of runs", hint=f"for a duration use --duration {runs}")
    if duration and budget.seconds is None:
        raise UsageError(f"--duration {duration}: a duration needs a unit", hint=f"--duration {duration}s")
    if batch is not None and batch < 1:
        raise UsageError(f"--batch {batch}: must be 1 or more", hint="for example --batch 8")
    from_model, target, data = recorded_defaults(recorded_in_file(model), target=target, data=data)
    options = ProfileOptions(budget=budget, warmup=Budget.parse(str(warmup), "--warmup"), batch=batch,
                             threads=threads, data=data, shapes=parse_shapes(shapes),
                             layer_runs=max(0, layer_runs), progress=progress)
    cpus = (parse_cpus(affinity) if isinstance(affinity, str) else list(affinity)) if affinity else None
    baseline = comparison = None
    if vs is not None:
        result, baseline = profile_pair(model, vs, target, options, affinity=cpus)
        # interleaved: load hits both alike; paired blocks of 10 runs, p50 of each
        comparison = interleaved_report(result, baseline, threshold=0.05, confidence=0.99, metric="p50")
        from edgepack.profile.verdict import describe

        comparison["summary"] = describe(comparison)
        result["vs"] = dict(baseline)  # with its environment: a fleet adds it to the history as it is
        result["comparison"] = comparison
    else:
        result = profile_model(model, target, options, affinity=cpus)
    path = None
    if history:
        store = History(history_db)
        for item in ([result, baseline] if baseline is not None else [result]):
            store.add(item)
        path = str(store.path)
    return ProfileReport(result, baseline, comparison, path, from_model)


@dataclass
class CheckReport(CommandResult):
    """JSON `edgepack.check/1`; exit code 1 only on a significant slowdown over the threshold."""

    report: dict[str, Any] = field(metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        return self.report

    def text(self) -> str:
        from edgepack.profile.regression import format_check

        return format_check(self.report)

    @property
    def regression(self) -> bool:
        return bool(self.report["regression"])

    @property
    def exit_code(self) -> int:
        return 1 if self.regression else 0

    def summary(self) -> str:
        """The verdict line, as the CLI prints it and the JSON's `summary` holds it:
        `latency slower: current/baseline 1.302x at p1, 99% interval [1.121, 1.513], threshold 1.05x`."""
        from edgepack.profile.verdict import describe

        return describe(self.report)


def parse_threshold(text: str | float) -> float:
    """'5%' or 0.05 -> 0.05."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        number = float(text)
    else:
        value = str(text).strip()
        try:
            number = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
        except ValueError:
            raise UsageError(f"--threshold {text!r}: not a percentage", hint="write --threshold 5% or 0.05") from None
    if number < 0:
        raise UsageError(f"--threshold {text!r}: must not be negative", hint="write --threshold 5%")
    return number


def read_result(path: str | os.PathLike) -> dict:
    """A profile result written by `edgepack profile --json FILE`, validated."""
    from edgepack.profile.regression import validate_profile

    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise UsageError(f"profile result not found: {file}", hint="write it with `edgepack profile ... --json FILE`") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: not a JSON profile result ({exc})",
                         hint="write it with `edgepack profile ... --json FILE`") from None
    return validate_profile(data, str(file))


ARTIFACT_SUFFIXES = (".onnx", ".ort", ".engine", ".plan", ".trt")


def is_artifact(path) -> bool:
    """A model file (checked by timing it) rather than a profile result (JSON)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() in ARTIFACT_SUFFIXES


@cli_keywords
def check(current: str | os.PathLike | dict, baseline: str | os.PathLike | dict | list, *,
          threshold: str | float = "5%", confidence: float = 0.99, metric: str = "p1",
          history_db: str | os.PathLike | None = None, history_runs: int = 5,
          force: bool = False, confirm: bool | None = None, confirm_duration: str = "2s",
          target=None, duration: str = "3s", progress: bool = False) -> CheckReport:
    """Is `current` significantly slower than `baseline`?

    Two artifacts (`check("new.onnx", "old.onnx", target="x86-cpu")`, the recommended CI gate):
    both are timed in this process, interleaved in alternating blocks, for `duration`; a suspect
    result is timed interleaved again (`confirm_duration`) and the pooled pairs decide.
    Two profile results (JSON files or dicts; `baseline` may also be a list of results,
    "history": the recent runs of the same model and target on the same kind of device, or "vs":
    the model `current` was timed interleaved with by `profile --vs`): the statistic is
    `edgepack.check_regression`, and a suspect slowdown is confirmed by an interleaved rerun on
    this device where the model files the profiles name are here (`confirm`; None: where they
    are). The same artifact run by the same software is "same" (edgepack.profile.regression)."""
    from edgepack.profile.confirm import gate
    from edgepack.profile.environment import device_kind
    from edgepack.profile.history import History
    from edgepack.profile.regression import check_regression, validate_profile
    from edgepack.profile.timing import Budget
    from edgepack.profile.verdict import describe

    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: not one of {', '.join(METRICS)}", hint="e.g. --metric p50")
    limit = parse_threshold(threshold)
    if not (0.5 < confidence < 1):
        raise UsageError(f"--confidence {confidence:g}: must be between 0.5 and 1",
                         hint="for example --confidence 0.99")
    again = Budget.parse(confirm_duration, "--confirm-duration")
    if again.seconds is None:
        raise UsageError(f"--confirm-duration {confirm_duration}: a duration needs a unit",
                         hint=f"--confirm-duration {confirm_duration}s")
    if is_artifact(current) or is_artifact(baseline):
        if not (is_artifact(current) and is_artifact(baseline)):
            raise UsageError(f"check {current} --baseline {baseline}: give two artifacts or two profile results",
                             hint="check CUR.onnx --baseline BASE.onnx (timed interleaved here), or "
                                  "check cur.json --baseline base.json")
        report = check_artifacts(current, baseline, target=target, threshold=limit, confidence=confidence,
                                 metric=metric, duration=duration, confirm=confirm,
                                 confirm_duration=again.seconds, progress=progress)
        report["summary"] = describe(report)
        return CheckReport(report)
    current = validate_profile(current, "current") if isinstance(current, dict) else read_result(current)
    if isinstance(baseline, str) and baseline == "history":
        store = History(history_db)
        device = None if force else device_kind(current.get("environment"))
        runs = store.recent(model_sha256=current["model"]["sha256"], target=current.get("target"),
                            limit=max(1, history_runs), exclude_run_id=current.get("id"), device=device)
        if not runs:
            on = f" on a {device}" if device else ""
            raise UsageError(f"no earlier runs of {current['model']['name']} on target {current.get('target')}{on} "
                             f"in {store.path}", hint="profile the baseline first (on the same kind of device), "
                             "or pass --baseline FILE")
        baseline = [validate_profile(b, f"{store.path} (run {b.get('id')})") for b in runs]
    elif isinstance(baseline, str) and baseline == "vs":  # timed interleaved with it: same process, same load
        if not isinstance(current.get("vs"), dict):
            raise UsageError("--baseline vs: the current result was not timed with `profile --vs`",
                             hint="profile it with --vs BASELINE, or pass --baseline FILE")
        baseline = validate_profile({**current["vs"], "environment": current.get("environment")}, "vs")
        force = True  # two models by design
        confirm = False if confirm is None else confirm
    elif isinstance(baseline, dict):
        baseline = validate_profile(baseline, "baseline")
    elif not isinstance(baseline, list):
        baseline = read_result(baseline)
    report = check_regression(current, baseline, threshold=limit, confidence=confidence, metric=metric,
                              force=force)
    report = gate(report, current, baseline if isinstance(baseline, list) else [baseline], confirm=confirm,
                  duration=again.seconds, force=force, progress=progress)
    report["summary"] = describe(report)
    return CheckReport(report)


def check_artifacts(current, baseline, *, target=None, threshold: float = 0.05, confidence: float = 0.99,
                    metric: str = "p1", duration: str = "3s", confirm: bool | None = None,
                    confirm_duration: float = 2.0, progress: bool = False) -> dict:
    """`check CUR.onnx --baseline BASE.onnx`: both timed interleaved in one process (ABBA blocks
    of 10 runs, paired block percentiles; half the time current first, half baseline first:
    confirm.time_both_orders); a suspect first verdict is timed so again and decided on the
    pairs of both runs together."""
    from edgepack.profile import environment as env
    from edgepack.profile.confirm import (CONFIRM_PAIRS, MIN_PAIRS, STARVED_FACTOR, decide, interleaved_report,
                                          suspect, time_both_orders)
    from edgepack.profile.profiler import ProfileOptions, is_engine
    from edgepack.profile.timing import Budget

    for path in (current, baseline):
        if not Path(path).is_file():
            raise UsageError(f"artifact not found: {path}", hint="build it first, or check two profile JSON files")
        if is_engine(path):
            raise UsageError(f"{path}: the interleaved check times ONNX Runtime artifacts only",
                             hint="profile each engine with `edgepack profile --json` and check the JSON files")
    budget = Budget.parse(duration, "--duration")
    if budget.seconds is None:
        raise UsageError(f"--duration {duration}: a duration needs a unit", hint=f"--duration {duration}s")
    options = ProfileOptions(budget=budget, warmup=Budget(seconds=0.2), layer_runs=0, progress=progress)
    load_before = env.load_average()
    seconds = budget.seconds
    fresh, base = time_both_orders(current, baseline, target, options, min_pairs=MIN_PAIRS,
                                   max_seconds=STARVED_FACTOR * seconds)
    report = interleaved_report(fresh, base, threshold=threshold, confidence=confidence, metric=metric)
    report["load_average"] = {**report.get("load_average", {}), "before": load_before, "after": env.load_average()}
    if not suspect(report) or confirm is False:
        report["confirm"] = {"ran": False, "confirmed": None,
                             "reason": "the same artifact run by the same software" if report.get("identical")
                             else "--no-confirm" if confirm is False else "no slowdown over the threshold possible"}
        return report
    import time

    again = ProfileOptions(budget=Budget(seconds=confirm_duration), warmup=Budget(seconds=0.1), layer_runs=0,
                           progress=progress)
    before, start = env.load_average(), time.perf_counter()
    fresh2, base2 = time_both_orders(current, baseline, target, again, min_pairs=CONFIRM_PAIRS,
                                     max_seconds=STARVED_FACTOR * confirm_duration)
    pooled = interleaved_report(fresh2, base2, threshold=threshold, confidence=confidence, metric=metric,
                                earlier=(fresh["samples_ms"], base["samples_ms"]))
    record = {"ran": True, "mode": "interleaved", "confirmable": True,
              "reason": "timed interleaved again (each order half the time); the pairs of both runs decide",
              "duration_s": round(time.perf_counter() - start, 3), "load_before": before,
              "load_after": env.load_average(), "report": pooled, "confirmed": pooled["verdict"] == "slower"}
    return decide(report, record)
