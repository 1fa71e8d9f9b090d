"""Charts for the HTML report: matplotlib (Agg, imported when used) rendered to inline SVG."""
from __future__ import annotations

import io
import re

import numpy as np

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
        hist.hist(samples, bins=bins, alpha=0.55, color=color, label=f"{label} (p50 {np.median(samples):.3f})")
        cdf.plot(samples, np.arange(1, len(samples) + 1) / len(samples), color=color, label=label)
    hist.set(xlabel="latency (ms)", ylabel="runs", title="distribution (to p99 of all runs)")
    cdf.set(xlabel="latency (ms)", ylabel="fraction of runs <= x", title="CDF (to p99 of all runs)",
            ylim=(0, 1.01), xlim=(low, high))
    cdf.grid(alpha=0.3)
    hist.legend(frameon=False)
    return _svg(plt, fig)


def bars(labels: list[str], values: list[float], *, xlabel: str, title: str,
         highlight_low: bool = False) -> str:
    """Horizontal bars, largest first (smallest first when highlight_low: worst SQNR on top)."""
    order = np.argsort(values) if highlight_low else np.argsort(values)[::-1]
    labels = [_short(labels[i]) for i in order]
    values = [float(values[i]) for i in order]
    plt, fig = _figure(9.5, 0.8 + 0.28 * len(values))
    axis = fig.subplots()
    colors = [COLORS[1] if highlight_low and i < 3 else COLORS[0] for i in range(len(values))]
    axis.barh(range(len(values)), values, color=colors)
    axis.set_yticks(range(len(values)), labels)
    axis.invert_yaxis()
    for i, value in enumerate(values):
        axis.text(value, i, f" {value:.3g}", va="center", fontsize=8)
    axis.set(xlabel=xlabel, title=title)
    axis.grid(axis="x", alpha=0.3)
    return _svg(plt, fig)


def grouped_bars(groups: list[str], series: dict[str, list[float]], *, ylabel: str, title: str) -> str:
    """Vertical bars, one group per label, one bar per series (e.g. sizes per step)."""
    plt, fig = _figure(9.5, 3.0)
    axis = fig.subplots()
    width = 0.8 / max(len(series), 1)
    for k, (color, (name, values)) in enumerate(zip(COLORS, series.items())):
        x = np.arange(len(groups)) + k * width
        axis.bar(x, values, width, color=color, label=name)
        for xi, v in zip(x, values):
            axis.text(xi, v, f"{v:,.3g}", ha="center", va="bottom", fontsize=8)
    axis.set_xticks(np.arange(len(groups)) + width * (len(series) - 1) / 2, groups)
    axis.set(ylabel=ylabel, title=title)
    if len(series) > 1:
        axis.legend(frameon=False)
    return _svg(plt, fig)


def _short(name: str, limit: int = 48) -> str:
    name = re.sub(r"\s+", " ", str(name))
    return name if len(name) <= limit else "…" + name[-limit + 1:]
