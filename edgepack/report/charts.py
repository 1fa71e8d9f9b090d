"""Charts for the HTML report: matplotlib (Agg, imported when used) rendered to inline SVG."""
from __future__ import annotations

import io
import re

import numpy as np

from edgepack.report.numbers import number

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _figure(width: float, height: float):
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    plt.rcParams.update({"font.size": 9, "svg.fonttype": "none", "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt, plt.figure(figsize=(width, height))


def _svg(plt, figure) -> str:
    buffer = io.StringIO()
    figure.tight_layout()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def latency(series: dict[str, list[float]]) -> str:
    """Histogram and CDF of latency samples (ms), one colour per series."""
    plt, fig = _figure(9.5, 3.2)
    hist, cdf = fig.subplots(1, 2)
    everything = np.concatenate([np.asarray(v, float) for v in series.values()])
    low, high = everything.min(), np.percentile(everything, 99)  # the slowest 1% would squash the rest
    bins = np.linspace(low, high, 40)
    for color, (label, samples) in zip(COLORS, series.items()):
        samples = np.sort(np.asarray(samples, float))
        hist.hist(samples, bins=bins, alpha=0.55, color=color, label=f"{label} (p50 {number(np.median(samples))} ms)")
        cdf.plot(samples, np.arange(1, len(samples) + 1) / len(samples), color=color, label=label)
    hist.set(xlabel="latency (ms)", ylabel="runs", title="distribution (to p99 of all runs)")
    cdf.set(xlabel="latency (ms)", ylabel="fraction of runs <= x", title="CDF (to p99 of all runs)",
            ylim=(0, 1.01), xlim=(low, high))
    cdf.grid(alpha=0.3)
    hist.legend(frameon=False)
    return _svg(plt, fig)


def bars(labels: list[str], values: list[float], *, xlabel: str, title: str,
         highlight_low: bool = False) -> str:
    """Horizontal bars, largest first (smallest first when highlight_low: worst SQNR on top).
    Long labels (node names) are wrapped onto several lines, never cut."""
    order = np.argsort(values, kind="stable") if highlight_low else np.argsort(values, kind="stable")[::-1]
    labels = [wrap(labels[i]) for i in order]
    values = [float(values[i]) for i in order]
    lines = [label.count("\n") + 1 for label in labels]
    plt, fig = _figure(7.5, 0.9 + 0.2 * sum(lines) + 0.1 * len(values))
    axis = fig.subplots()
    positions = np.cumsum([0] + [(a + b) / 2 + 0.25 for a, b in zip(lines, lines[1:])])  # room for 2-line labels
    colors = [COLORS[1] if highlight_low and i < 3 else COLORS[0] for i in range(len(values))]
    axis.barh(positions, values, height=0.8, color=colors)
    axis.set_yticks(positions, labels, fontsize=8)
    axis.invert_yaxis()
    for y, value in zip(positions, values):
        axis.text(value, y, f" {number(value, 3)}", va="center", fontsize=8)
    axis.set(xlabel=xlabel, title=title)
    axis.xaxis.set_major_formatter(_plain_axis())
    axis.grid(axis="x", alpha=0.3)
    return _svg(plt, fig)


def grouped_bars(groups: list[str], series: dict[str, list[float]], *, ylabel: str, title: str) -> str:
    """Vertical bars, one group per label, one bar per series (e.g. sizes per step)."""
    plt, fig = _figure(7.5, 3.0)
    axis = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for k, (color, (name, values)) in enumerate(zip(COLORS, series.items())):
        x = np.arange(len(groups)) + k * width
        axis.bar(x, values, width, color=color, label=name)
        for xi, v in zip(x, values):
            axis.text(xi, v, number(v, 3), ha="center", va="bottom", fontsize=8)
    axis.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, groups)
    axis.set(ylabel=ylabel, title=title)
    axis.yaxis.set_major_formatter(_plain_axis())
    if len(series) > 1:
        axis.legend(frameon=False)
    return _svg(plt, fig)


def wrap(name: str, width: int = 44) -> str:
    """A long name on several lines, broken after '/', '.', '_' or ' ' where possible: all of it shown."""
    name = re.sub(r"\s+", " ", str(name))
    lines, line = [], ""
    for piece in re.findall(r"[^/._ ]*[/._ ]?", name):
        if line and len(line) + len(piece) > width:
            lines.append(line.rstrip())
            line = ""
        while len(piece) > width:  # one piece longer than a line: split it
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    if line:
        lines.append(line.rstrip())
    return "\n".join(lines)


def _plain_axis():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _: number(value, 3))
