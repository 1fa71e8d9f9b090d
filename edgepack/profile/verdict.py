"""The one way a latency verdict is written: by the CLI, `CheckReport.summary()`, the JSON
(`summary`) and the HTML report.

    latency slower: current/baseline 1.302x at p1, 99% interval [1.121, 1.513], threshold 1.05x

The verdict word (slower / faster / same) comes first, then the ratio it was decided on (always
current / baseline, so 0.8x is faster), its interval, the metric and the threshold; what made the
verdict (the same artifact, a confirmation, one that could not run) follows after a semicolon.
A verdict and a ratio never disagree: when a confirming rerun decides, its ratio is the one shown.
"""
from __future__ import annotations

VERDICTS = ("slower", "faster", "same")


def ratio_text(report: dict, label: str = "current/baseline") -> str:
    """`current/baseline 1.302x at p1, 99% interval [1.121, 1.513], threshold 1.05x`."""
    low, high = report["ci"]
    pct = f"{round(report['confidence'] * 100, 2):g}%"
    return (f"{label} {report['ratio']:.3f}x at {report['metric']}, {pct} interval [{low:.3f}, {high:.3f}], "
            f"threshold {1 + report['threshold']:.2f}x")


def because(report: dict) -> str | None:
    """What decided the verdict, in a few words (None: the statistic alone)."""
    if report.get("identical"):
        return "the same artifact run by the same software: the difference measured is the machine's"
    confirm = report.get("confirm") or {}
    if confirm.get("ran"):
        return f"decided by a confirming {confirm['mode']} rerun (first run: {report.get('first_verdict')})"
    if report["verdict"] == "slower" and confirm.get("reason") and confirm.get("confirmable") is False:
        return "not confirmed: " + confirm["reason"]
    if report.get("statistic") == "paired blocks":
        return "timed interleaved in one process"
    return None


def describe(report: dict, label: str = "current/baseline", subject: str = "latency") -> str:
    """The verdict line (see the module docstring)."""
    line = f"{subject} {report['verdict']}: {ratio_text(report, label)}"
    why = because(report)
    return f"{line}; {why}" if why else line
