"""The HTML report of a run folder (`edgepack run`/`demo` output): one self-contained file.

It reads DIR/run.json (written by the recipe engine) and each step's JSON report; charts are
inline SVG, styles inline, nothing is fetched when the page is viewed.
"""
from __future__ import annotations

import html
import json
import logging
import platform
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.report import charts
from edgepack.report.numbers import number

CHART_LAYERS = 20  # per-layer / per-tensor charts show the worst 20; the rest go to a table

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    folder: Path
    run: dict
    steps: list[dict]
    reports: dict[tuple[str, str | None], dict] = field(default_factory=dict)
    baseline: dict | None = None

    def precision(self, ref: str) -> str:
        """int8 when a quantize step is upstream of `ref` (a step id), else fp32 (walked without
        recursion, each step once: a hand-edited run.json may hold a cycle)."""
        by_id = {s["id"]: s for s in self.steps}
        todo, seen = [ref], set()
        while todo:
            step = by_id.get(todo.pop())
            if step is None or step["id"] in seen:
                continue
            seen.add(step["id"])
            if step["command"] == "quantize":
                return "int8"
            todo.extend(step.get("inputs") or [])
        return "fp32"

    def of(self, command: str) -> list[tuple[dict, dict]]:
        """(step, its JSON report) for the steps of `command` that have a report."""
        return [(s, self.reports[(s["id"], s["target"])]) for s in self.steps
                if s["command"] == command and (s["id"], s["target"]) in self.reports]


def load_run(folder: str | Path) -> RunData:
    """The run folder's run.json and step reports, read only from inside the folder and checked
    (edgepack.report.run_files): a step report that is not one is left out with a warning."""
    from edgepack.report.run_files import RunFileError, check_run, inside, read_json

    folder = Path(folder)
    run_file = folder / "run.json"
    if not run_file.exists():
        raise EdgepackError(f"{folder} is not a run folder (no run.json)",
                            hint="pass the output folder of `edgepack run` or `edgepack demo`")
    run = read_json(folder, run_file)
    data = RunData(folder, run, check_run(run, run_file))
    for step in data.steps:
        path = _step_file(folder, step, step.get("report"))
        if path is not None:
            try:
                data.reports[(step["id"], step["target"])] = read_json(folder, path)
            except RunFileError as exc:
                logger.warning("%s; left out of the report", exc.message)
    baseline = Path(run["baseline"]) if run.get("baseline") else None
    if baseline is not None and inside(folder, baseline if baseline.is_absolute() else folder / baseline):
        try:
            data.baseline = read_json(folder, baseline if baseline.is_absolute() else folder / baseline)
        except RunFileError as exc:
            logger.warning("%s; the baseline is left out of the report", exc.message)
    elif baseline is not None:
        logger.warning("the baseline %s is outside the run folder; not read (copy it into %s to show it)",
                       baseline, folder)
    return data


def _step_file(folder: Path, step: dict, recorded: str | None) -> Path | None:
    """A step's file inside the run folder: `DIR/[<target>/]<name>` of the name recorded (the
    recorded path itself only when it is inside the folder), so the report works from any directory."""
    from edgepack.report.run_files import inside

    if not recorded:
        return None
    name = Path(recorded).name
    target = step.get("target") or ""
    for candidate in (Path(recorded), folder / target / name, folder / name):
        if inside(folder, candidate if candidate.is_absolute() else Path.cwd() / candidate):
            return candidate
    return None


def summary(data: RunData) -> list[tuple[str, float | None, float | None]]:
    """(metric, FP32, INT8) for size, top-1 and latency p50 of the first target."""
    float_size = int8_size = None
    for step in data.steps:
        if step.get("size_bytes") and step["command"] in ("optimize", "prune", "compress", "quantize"):
            if data.precision(step["id"]) == "int8":
                int8_size = step["size_bytes"]
            else:
                float_size = step["size_bytes"]
    float_size = float_size or data.run.get("model_size_bytes")
    top1 = (None, None)
    for step, report in data.of("compare"):
        accuracy = report.get("accuracy")
        refs = step.get("inputs", [])
        if accuracy and len(refs) == 2 and [data.precision(r) for r in refs] == ["fp32", "int8"]:
            top1 = (100 * accuracy["a"], 100 * accuracy["b"])
    p50 = {}
    first_target = (data.run.get("targets") or [None])[0]
    for step, report in data.of("profile"):
        if step["target"] == first_target and "latency_ms" in report:
            p50.setdefault(data.precision(step["id"]), report["latency_ms"]["p50"])
    kib = lambda n: n / 1024 if n else None  # noqa: E731
    return [("size (KiB)", kib(float_size), kib(int8_size)), ("top-1 (%)", *top1),
            ("latency p50 (ms)", p50.get("fp32"), p50.get("int8"))]


def format_summary(rows) -> str:
    def cell(value):
        return f"{number(value).replace(',', ''):>10}" if value is not None else f"{'n/a':>10}"
    lines = [f"{'':<18} {'FP32':>10} {'INT8':>10} {'INT8/FP32':>10}"]
    for name, fp32, int8 in rows:
        ratio = cell(int8 / fp32) if fp32 and int8 is not None else cell(None)
        lines.append(f"{name:<18} {cell(fp32)} {cell(int8)} {ratio}")
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML

def _table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if v is None or isinstance(v, (int, float)):
            return number(v)
        return html.escape(str(v))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header) if any(header) else ""
    body = "".join("<tr>" + "".join(f'<td class="{"n" if isinstance(v, (int, float)) else "t"}">{fmt(v)}</td>'
                                    for v in row) + "</tr>" for row in rows)
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""  # key/value tables need no header
    return f'<div class="scroll"><table>{thead}<tbody>{body}</tbody></table></div>'


def _figure(svg: str, caption: str) -> str:
    return f'<figure class="chart">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{body}</section>"


def _steps_section(data: RunData) -> str:
    rows = [[s["id"], s["target"] or "", s["command"], s["status"], s["seconds"],
             s.get("size_bytes"), Path(s["artifact"]).name if s.get("artifact") else "", s.get("note", "")]
            for s in data.steps]
    steps = _table(["step", "target", "command", "status", "seconds", "artifact bytes", "artifact", "note"], rows)
    tables = ""
    optimize = data.of("optimize")
    if optimize:
        rows = [[step["id"], key, report["before"][key], report["after"][key],
                 report["after"][key] / report["before"][key] if report["before"][key] else None]
                for step, report in optimize for key in ("nodes", "params", "macs", "size_bytes")]
        tables += "<h3>optimize</h3>" + _table(["step", "", "before", "after", "ratio"], rows)
    chart = ""
    sized = [s for s in data.steps if s.get("size_bytes")]
    if sized:
        labels = ["model"] + [s["id"] + (f"\n{s['target']}" if s["target"] else "") for s in sized]
        sizes = [data.run.get("model_size_bytes", 0) / 1024] + [s["size_bytes"] / 1024 for s in sized]
        chart = _figure(charts.grouped_bars(labels, {"size": sizes}, ylabel="KiB", title="artifact sizes"),
                        "Size of each step's artifact (KiB), beside the input model.")
    return _section("Pipeline", steps + f'<div class="grid2"><div>{tables}</div>{chart}</div>')


def _accuracy_section(data: RunData) -> str:
    body = ""
    for step, report in data.of("compare"):
        a, b = (step.get("inputs") + ["?", "?"])[:2]
        accuracy = report.get("accuracy")
        if accuracy:
            samples = accuracy.get("samples")
            body += _table([f"top-1 accuracy ({samples} labelled samples)" if samples else "top-1 accuracy",
                            f"A: {a} ({data.precision(a)})", f"B: {b} ({data.precision(b)})", "B − A (points)"],
                           [[step["id"], 100 * accuracy["a"], 100 * accuracy["b"],
                             100 * (accuracy["b"] - accuracy["a"])]])
        body += _table(["output", "SQNR dB", "cosine", "max abs error", "top-1 agreement"],
                       [[o["name"], o.get("sqnr_db"), o.get("cosine"), o.get("max_abs_error"),
                         o.get("top1_agreement")] for o in report.get("outputs", [])])
    for step, report in data.of("quantize"):
        body += (f"<p>{html.escape(step['id'])}: {len(report.get('quantized_nodes', []))} nodes quantized for "
                 f"{html.escape(str(report.get('target')))} ({html.escape(str(report.get('method')))}), "
                 f"{len(report.get('float_nodes', []))} kept in float; check-qdq "
                 f"{'ok' if report.get('check_qdq', {}).get('ok') else 'FAILED'}.</p>")
    return _section("Accuracy", f'<div class="row">{body}</div>' if body else "<p>No compare step in this run.</p>")


def _machine(report: dict) -> str:
    """The machine a profile ran on, as it was then: what decides whether two latencies compare."""
    env = report.get("environment") or {}
    load = env.get("load_average")
    rows = [["CPU", env.get("cpu_model")], ["CPUs", env.get("cpu_count")],
            ["CPU flags", " ".join(env["cpu_flags"]) if env.get("cpu_flags") is not None else None],
            ["load average (1, 5, 15 min)", ", ".join(number(x, 3) for x in load) if load else None],
            ["threads", report.get("threads")], ["governor", env.get("governor")],
            ["providers", ", ".join(env.get("providers") or []) or None]]
    rows = [r for r in rows if r[1] is not None]
    if not rows:
        return ""
    return '<aside class="machine"><h4>machine during the runs</h4>' + _table(["", ""], rows) + "</aside>"


def _latency_section(data: RunData) -> str:
    body = ""
    targets = data.run.get("targets") or [None]
    for target in targets:
        profiles = [(s, r) for s, r in data.of("profile") if s["target"] == target]
        if not profiles and not data.baseline:
            continue
        series = {f"{s['id']} ({data.precision(s['id'])})": r.get("samples_ms", []) for s, r in profiles}
        rows = [[s["id"], data.precision(s["id"]), r.get("batch"), *(r["latency_ms"].get(k) for k in
                 ("min", "mean", "p50", "p90", "p99", "max")), r.get("throughput_per_s")] for s, r in profiles]
        if data.baseline and "latency_ms" in data.baseline:
            series["baseline"] = data.baseline.get("samples_ms", [])
            rows.append(["baseline", "", data.baseline.get("batch"), *(data.baseline["latency_ms"].get(k)
                         for k in ("min", "mean", "p50", "p90", "p99", "max")), data.baseline.get("throughput_per_s")])
        body += f"<h3>{html.escape(target or '')}</h3>" + _table(
            ["profile", "precision", "batch", "min ms", "mean ms", "p50 ms", "p90 ms", "p99 ms", "max ms",
             "per second"], rows)
        series = {k: v for k, v in series.items() if v}
        if series:
            machine = _machine(profiles[0][1]) if profiles else _machine(data.baseline or {})
            body += ('<div class="beside">' + _figure(charts.latency(series), "Latency of each run (ms): "
                     "histogram and cumulative distribution; further left is faster.") + machine + "</div>")
        per_layer = ""
        for step, report in profiles:
            layers = report.get("layers") or []
            layers = sorted(layers, key=lambda l: -l.get("time_ms", 0))
            if layers:
                from edgepack.profile.profiler import layer_label

                shown = layers[:CHART_LAYERS]
                per_layer += "<div>" + _figure(charts.bars([f"{layer_label(l)} [{l.get('op_type', '')}]" for l in shown],
                                            [l.get("time_ms", 0) for l in shown], xlabel="ms per run",
                                            title=f"per-layer time: {step['id']}"),
                                f"Time per layer ({step['id']}, {target}), the slowest {len(shown)} of "
                                f"{len(layers)}; names are the model's nodes (ONNX Runtime's own are marked).")
                if len(layers) > CHART_LAYERS:
                    per_layer += _details(f"the other {len(layers) - CHART_LAYERS} layers of {step['id']}", _table(
                        ["layer", "op", "ms per run", "%"],
                        [[layer_label(l), l.get("op_type"), l.get("time_ms"), l.get("percent")]
                         for l in layers[CHART_LAYERS:]]))
                per_layer += "</div>"
        if per_layer:
            body += f'<div class="grid2">{per_layer}</div>'
    return _section("Latency", body or "<p>No profile step in this run.</p>")


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{body}</details>"


def _layers_section(data: RunData) -> str:
    body = ""  # each chart with its table in one grid cell
    for step, report in data.of("quantize"):
        sensitivity = sorted(report.get("sensitivity") or [], key=lambda s: s["sqnr_db"])
        if sensitivity:
            shown = sensitivity[:CHART_LAYERS]
            body += "<div>" + _figure(charts.bars([f"{s['node']} [{s['op_type']}]" for s in shown],
                                        [s["sqnr_db"] for s in shown], xlabel="output SQNR (dB), higher is "
                                        "better", title="sensitivity: model output when only this layer is INT8",
                                        highlight_low=True),
                            f"Per-layer sensitivity: the model output's SQNR when one layer at a time is "
                            f"quantized, the {len(shown)} most sensitive of {len(sensitivity)}. The lowest (red) "
                            "hurt the most: candidates for --exclude.")
            if len(sensitivity) > CHART_LAYERS:
                body += _details(f"the other {len(sensitivity) - CHART_LAYERS} layers", _table(
                    ["node", "op", "output SQNR dB"],
                    [[s["node"], s["op_type"], s["sqnr_db"]] for s in sensitivity[CHART_LAYERS:]]))
            body += "</div>"
    for step, report in data.of("compare"):
        layers = sorted((l for l in report.get("layers") or [] if l.get("sqnr_db") is not None),
                        key=lambda l: l["sqnr_db"])
        if layers:
            shown = layers[:CHART_LAYERS]
            body += "<div>" + _figure(charts.bars([l["tensor"] for l in shown], [l["sqnr_db"] for l in shown],
                                        xlabel="SQNR (dB), higher is better",
                                        title=f"per-tensor error: {step['id']} ({len(shown)} worst of {len(layers)})",
                                        highlight_low=True),
                            f"SQNR of the {len(shown)} worst of {len(layers)} intermediate tensors of B against A "
                            "on the evaluation data; every tensor is in the table below.")
            body += _details(f"all {len(layers)} tensors, worst first", _table(
                ["tensor", "SQNR dB", "cosine", "max abs error"],
                [[l["tensor"], l["sqnr_db"], l.get("cosine"), l.get("max_abs_error")] for l in layers]))
            body += "</div>"
    if body:
        body = f'<div class="grid2">{body}</div>'
    return _section("Per-layer error", body or "<p>No per-layer data (quantize --sensitivity or compare).</p>")


def _environment_section(data: RunData) -> str:
    env = dict(data.run.get("versions", {}))
    for _, report in data.of("profile"):
        env.update({k: (" ".join(v) if isinstance(v, list) else v) for k, v in (report.get("environment") or {}).items()
                    if not isinstance(v, dict) and not (isinstance(v, list) and not all(isinstance(x, str) for x in v))})
        break
    env.setdefault("machine", platform.machine())
    rows = [[k, v] for k, v in env.items()]
    rows += [["recipe", data.run.get("recipe")], ["recipe sha256", data.run.get("recipe_sha256")],
             ["model", data.run.get("model")], ["targets", ", ".join(data.run.get("targets") or [])]]
    pipeline = _input_pipeline(data)
    if pipeline:
        rows.append(["input pipeline", pipeline])
    return _section("Environment", _table(["", ""], rows))


def _input_pipeline(data: RunData) -> str | None:
    """The preprocessing the model's inputs need, as the build manifest, quantize or the ranges
    record it: `resize 256 (bilinear) -> crop 224 -> ...`."""
    from edgepack.calib.preprocess import Preprocess

    for command in ("build", "quantize", "calibrate"):
        for _, report in data.of(command):
            recorded = report.get("preprocess")
            if isinstance(recorded, dict) and recorded:
                try:
                    return Preprocess.from_manifest(recorded, "report").describe()
                except EdgepackError:
                    return None
    return None


STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1800px;
padding:1.2rem 2rem;color:#222;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0} h2{font-size:1.2rem;border-bottom:2px solid #ddd;padding-bottom:.2rem;
margin-top:1.8rem} h3{font-size:1rem;margin:1rem 0 .3rem} h4{font-size:.9rem;margin:.2rem 0}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem;max-width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:.25rem .6rem;text-align:right;vertical-align:top}
th:first-child,td:first-child,td.t{text-align:left;overflow-wrap:anywhere} th{background:#f4f4f4}
td.t{min-width:4em} td:first-child{min-width:7em} .scroll{overflow-x:auto;max-width:100%}
td.n{white-space:nowrap;font-variant-numeric:tabular-nums}
figure.chart{margin:.6rem 0 1.2rem;flex:1 1 0;min-width:0} figure.chart svg{width:100%;height:auto}
figcaption{font-size:.8rem;color:#555} .summary td,.summary th{font-size:1rem}
.beside{display:flex;gap:1.5rem;align-items:flex-start;flex-wrap:wrap}
.grid2{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:1rem 2.5rem;align-items:start}
.row{display:flex;flex-wrap:wrap;gap:0 2.5rem;align-items:flex-start} .row p{flex-basis:100%}
.beside figure.chart{flex:3 1 700px} aside.machine{flex:1 1 280px;font-size:.85rem}
aside.machine td.t:last-child{text-align:left}
details{margin:.3rem 0 1rem} summary{cursor:pointer;color:#1f4e8c}
.verdict{display:inline-block;padding:.35rem .8rem;border-radius:.3rem;margin:.2rem .5rem .6rem 0;
font-size:1rem;font-weight:600} .slower{background:#fde2e1;color:#8b1a14} .same{background:#e6f0e6;color:#1d5a1d}
.faster{background:#e1ecfa;color:#1f4e8c}
.muted{color:#666;font-size:.85rem}
#verdict{margin:.4rem 0 .6rem}
.target-verdict{border-radius:.4rem;padding:.5rem .9rem;margin:.4rem 0;border-left:.5rem solid}
.target-verdict.good{background:#e6f4e6;border-color:#2e7d32} .target-verdict.bad{background:#fdecea;border-color:#c62828}
.target-verdict.neutral{background:#f4f4f4;border-color:#888}
.target-verdict .headline{font-size:1.15rem;font-weight:700}
.target-verdict ul{margin:.3rem 0 .1rem;padding-left:1.2rem} .target-verdict li{margin:.15rem 0}
li.axis-worse{color:#8b1a14} li.axis-worse b{color:#c62828} li.axis-better b{color:#2e7d32}
.line{color:#444;font-size:.85rem} li.axis-worse .line{color:#8b1a14}
.cause{font-size:.85rem;color:#6d1a14;margin-left:.4rem}
"""


def _verdicts(data: RunData) -> str:
    """The answers first: each latency check's verdict and ratio (check steps, profile --vs)."""
    from edgepack.profile.verdict import describe

    checks = [(s, r) for s, r in data.of("check") if "verdict" in r]
    checks += [(s, r["comparison"]) for s, r in data.of("profile") if isinstance(r.get("comparison"), dict)]
    out = ""
    for step, r in checks:
        where = f" on {step['target']}" if step.get("target") else ""
        try:
            line = describe(r)
        except (KeyError, TypeError, ValueError, IndexError):
            continue  # a hand-edited report without the numbers: left out
        out += (f'<div class="verdict {html.escape(str(r["verdict"]))}">{html.escape(step["id"])}{html.escape(where)}: '
                f"{html.escape(line)} · {number(r['current']['value_ms'])} ms vs "
                f"{number(r['baseline']['value_ms'])} ms</div>")
    return out


def _verdict_section(data: RunData) -> str:
    """The answer first: per target, INT8 against FP32 on every axis (report/verdict.py), green when
    better on all, a red line per axis where worse, with its likely causes."""
    from edgepack.report.verdict import verdicts

    out = ""
    for verdict in verdicts(data):
        state = "good" if verdict.green else "bad" if any(a.status == "worse" for a in verdict.axes) else "neutral"
        items = ""
        for axis in verdict.axes:
            causes = "".join(f'<div class="cause">likely cause: {html.escape(c)}</div>' for c in axis.causes)
            line = f' <span class="line">{html.escape(axis.line)}</span>' if axis.line else ""
            items += (f'<li class="axis axis-{html.escape(axis.status)}" data-axis="{html.escape(axis.name)}">'
                      f"<b>{html.escape(axis.name)}</b>: {html.escape(axis.sentence)}{line}{causes}</li>")
        items += "".join(f'<li class="axis-warning">warning: {html.escape(w)}</li>' for w in verdict.warnings)
        out += (f'<div class="target-verdict {state}" data-target="{html.escape(str(verdict.target))}">'
                f'<div class="headline">{html.escape(verdict.headline)}</div><ul>{items}</ul></div>')
    return f'<section id="verdict">{out}</section>' if out else ""


def render(data: RunData) -> str:
    rows = summary(data)
    summary_rows = [[name, fp32, int8, (int8 / fp32) if fp32 and int8 is not None else None]
                    for name, fp32, int8 in rows]
    summary_html = _table(["", "FP32", "INT8", "INT8 / FP32"], summary_rows).replace("<table>",
                                                                                     '<table class="summary">')
    sections = [_verdict_section(data), _section("Summary", _verdicts(data) + summary_html), _steps_section(data),
                _accuracy_section(data),
                _latency_section(data), _layers_section(data), _environment_section(data)]
    title = f"edgepack report: {Path(data.run.get('model', '')).name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p class='muted'>recipe {html.escape(str(data.run.get('recipe')))}"
            f" · run folder {html.escape(str(data.folder))}</p>{''.join(sections)}</body></html>\n")


def write_report(folder: str | Path, output: str | Path) -> Path:
    import os

    from edgepack.cli.common import write_text_atomic
    data = load_run(folder)
    try:
        page = render(data)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, RecursionError) as exc:
        raise EdgepackError(f"{folder}: a report in the run folder does not have the shape edgepack writes "
                            f"({type(exc).__name__}: {str(exc)[:120]})",
                            hint="re-run the recipe into a fresh folder, or remove the edited file") from None
    path = write_text_atomic(output, page)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # a page to share: readable like any new file, not 0600
    return path
