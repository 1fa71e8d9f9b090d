"""`edgepack profile` and `edgepack check`: latency you can gate CI on."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import UsageError

METRICS = ("p1", "p5", "p10", "p50", "p90", "p95", "p99")


@dataclass
class ProfileReport(CommandResult):
    """JSON `edgepack.profile/1` (`result`, with `vs` and `comparison` after --vs)."""

    result: dict[str, Any] = field(metadata=NOT_JSON)
    baseline: dict[str, Any] | None = field(default=None, metadata=NOT_JSON)
    comparison: dict[str, Any] | None = field(default=None, metadata=NOT_JSON)
    history_path: str | None = field(default=None, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        return self.result

    def text(self, top: int = 10) -> str:
        from edgepack.profile.profiler import format_profile
        from edgepack.profile.regression import format_check

        text = format_profile(self.result, top)
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
    The lower-level functions are `edgepack.profile_model` and `edgepack.profile_pair`.
    """
    from edgepack.profile.history import History
    from edgepack.profile.profiler import ProfileOptions, parse_shapes, profile_model, profile_pair
    from edgepack.profile.regression import check_regression
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
    options = ProfileOptions(budget=budget, warmup=Budget.parse(str(warmup), "--warmup"), batch=batch,
                             threads=threads, data=data, shapes=parse_shapes(shapes),
                             layer_runs=max(0, layer_runs), progress=progress)
    cpus = (parse_cpus(affinity) if isinstance(affinity, str) else list(affinity)) if affinity else None
    baseline = comparison = None
    if vs is not None:
        result, baseline = profile_pair(model, vs, target, options, affinity=cpus)
        comparison = check_regression(result, baseline, force=True, metric="p50")  # interleaved: load hits both alike
        result["vs"] = {k: v for k, v in baseline.items() if k != "environment"}
        result["comparison"] = comparison
    else:
        result = profile_model(model, target, options, affinity=cpus)
    path = None
    if history:
        store = History(history_db)
        for item in ([result, baseline] if baseline is not None else [result]):
            store.add(item)
        path = str(store.path)
    return ProfileReport(result, baseline, comparison, path)


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
        """One line: `latency regression: 1.41x slower at p50 (threshold 1.05x)` or the verdict."""
        r = self.report
        slower = "slower" if r["ratio"] >= 1 else "faster"
        factor = r["ratio"] if r["ratio"] >= 1 else 1 / r["ratio"]
        head = "latency regression" if self.regression else f"latency {r['verdict']}"
        return f"{head}: {factor:.2f}x {slower} at {r['metric']} (threshold {1 + r['threshold']:.2f}x)"


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


def check(current: str | os.PathLike | dict, baseline: str | os.PathLike | dict | list, *,
          threshold: str | float = "5%", confidence: float = 0.99, metric: str = "p1",
          history_db: str | os.PathLike | None = None, history_runs: int = 5,
          force: bool = False, confirm: bool | None = None, confirm_duration: str = "2s",
          progress: bool = False) -> CheckReport:
    """Is `current` (a profile JSON file or result) significantly slower than `baseline` (a file,
    a result, a list of results, or "history": the recent runs of the same model and target on the
    same kind of device)? The statistic is `edgepack.check_regression`. A suspect slowdown is
    confirmed by an interleaved rerun on this device (`confirm`; None: where the model files the
    profiles name are here), timed for `confirm_duration` (edgepack.profile.confirm)."""
    from edgepack.profile.confirm import gate
    from edgepack.profile.environment import device_kind
    from edgepack.profile.timing import Budget
    from edgepack.profile.history import History
    from edgepack.profile.regression import check_regression, validate_profile

    if metric not in METRICS:
        raise UsageError(f"--metric {metric}: not one of {', '.join(METRICS)}", hint="e.g. --metric p50")
    limit = parse_threshold(threshold)
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
    elif isinstance(baseline, dict):
        baseline = validate_profile(baseline, "baseline")
    elif not isinstance(baseline, list):
        baseline = read_result(baseline)
    report = check_regression(current, baseline, threshold=limit, confidence=confidence, metric=metric,
                              force=force)
    duration = Budget.parse(confirm_duration, "--confirm-duration")
    if duration.seconds is None:
        raise UsageError(f"--confirm-duration {confirm_duration}: a duration needs a unit",
                         hint=f"--confirm-duration {confirm_duration}s")
    report = gate(report, current, baseline if isinstance(baseline, list) else [baseline], confirm=confirm,
                  duration=duration.seconds, force=force, progress=progress)
    return CheckReport(report)
