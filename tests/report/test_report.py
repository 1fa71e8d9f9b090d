"""The HTML report of a real run (optimize -> quantize --sensitivity -> compare on the digits CNN),
with a baseline profile measured here in ONNX Runtime, rendered as text and in headless Chromium."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgepack.recipe import load_recipe, run_recipe
from edgepack.report.html import load_run, summary
from edgepack.report.numbers import number
from edgepack.resources import data_dir, example_model
from tests.helpers import assert_one_line_error, edgepack_cli

CALIB = data_dir("calibration") / "digits" / "calib.npz"
EVAL = data_dir("calibration") / "digits" / "eval.npz"


def measured_profile(model: Path, runs: int = 200) -> dict:
    """A profile document (edgepack.profile/1 keys) from latencies measured now in ORT."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with np.load(EVAL) as data:
        feeds = {"input": data["input"][:1]}
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        samples.append(1000 * (time.perf_counter() - start))
    s = np.array(samples)
    stats = {"min": s.min(), "mean": s.mean(), "std": s.std(), "max": s.max(),
             **{f"p{q}": np.percentile(s, q) for q in (50, 90, 95, 99)}}
    return {"schema": "edgepack.profile/1", "model": {"path": str(model), "sha256": ""}, "target": "x86-cpu",
            "backend": "ort", "batch": 1, "threads": 1, "runs": runs, "warmup": 0,
            "latency_ms": {k: float(v) for k, v in stats.items()}, "throughput_per_s": 1000 / float(s.mean()),
            "samples_ms": samples, "outliers": 0, "layers": [], "environment": {}}


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    baseline = folder / "baseline.json"
    baseline.write_text(json.dumps(measured_profile(example_model())))
    recipe = folder / "r.recipe.toml"
    recipe.write_text(f"""
model = "{example_model()}"
targets = ["x86-cpu"]
data = "{CALIB}"
baseline = "baseline.json"
[[step]]
run = "optimize"
[[step]]
run = "quantize"
sensitivity = true
[[step]]
run = "compare"
input = ["optimize", "quantize"]
data = "{EVAL}"
[[step]]
run = "profile"
input = "optimize"
runs = 200
warmup = "10"
layer-runs = 5
no-history = true
[[step]]
id = "profile-int8"
run = "profile"
input = "quantize"
vs = "optimize"
runs = 300
warmup = "10"
layer-runs = 5
no-history = true
[[step]]
run = "check"
input = "profile"
baseline = "baseline.json"
metric = "p50"
threshold = "90%"
force = true
""")
    out = folder / "out"
    run_recipe(load_recipe(recipe), out)
    page = folder / "report.html"
    result = edgepack_cli("report", out, "-o", page)
    assert result.returncode == 0, result.stderr
    return out, page


def test_report_is_self_contained_with_every_section_and_chart(run_folder):
    out, html_path = run_folder
    text = html_path.read_text()
    for title in ("Summary", "Pipeline", "Accuracy", "Latency", "Per-layer error", "Environment"):
        assert f"<h2>{title}</h2>" in text
    # charts: sizes, latency (profiles + baseline), per-layer time of both profiles, sensitivity, per-tensor error
    svgs = re.findall(r"<svg.*?</svg>", text, flags=re.S)
    assert len(svgs) == 6 and all(svg.count("<path") > 5 for svg in svgs)
    # nothing to fetch: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<script" not in text
    # the numbers come from the steps' reports
    compare = json.loads((out / "compare.json").read_text())
    assert number(100 * compare["accuracy"]["b"]) in text
    sensitivity = json.loads((out / "quantize.json").read_text())["sensitivity"]
    assert all(s["node"] in text for s in sensitivity)  # whole names: wrapped, never cut
    # plain numbers: no scientific notation anywhere in the tables or on the charts
    assert not re.search(r"\d\.?\d*e[+-]\d\d", re.sub(r"<svg.*?</svg>", "", text, flags=re.S))
    assert not re.search(r">[^<]*\de[+-]\d\d[^<]*</text>", text)


def test_report_answers_the_check_and_names_the_machine(run_folder):
    out, html_path = run_folder
    text = html_path.read_text()
    check = json.loads((out / "x86-cpu" / "check.json").read_text())
    verdict = re.search(r'<div class="verdict (\w+)">(.*?)</div>', text)
    assert verdict and verdict.group(1) == check["verdict"]
    # the verdict in the one vocabulary: the JSON's summary line, word for word
    assert check["summary"].startswith(f"latency {check['verdict']}: current/baseline {check['ratio']:.3f}x at p50")
    assert html.escape(check["summary"]) in verdict.group(2)
    # the profile's layers carry the model's node names, not ONNX Runtime's renamed kernels
    profile = json.loads((out / "x86-cpu" / "profile.json").read_text())
    nodes = {n.name for n in __import__("onnx").load(out / "optimize.onnx").graph.node}
    named = [part for l in profile["layers"] if l["node"] for part in l["node"].split(" + ")]  # fused: A + B
    assert named and set(named) <= nodes and not any("_nchwc" in n or "_token_" in n for n in named)
    # beside the latency plot: the machine's load and CPU flags while it ran
    aside = re.search(r'<div class="beside">.*?<aside class="machine">(.*?)</aside>', text, flags=re.S).group(1)
    env = profile["environment"]
    assert "load average" in aside and number(env["load_average"][0], 3) in aside
    assert env["cpu_flags"] is None or " ".join(env["cpu_flags"]) in aside


def test_report_opens_with_the_verdict_per_target(run_folder):
    """Before any table: INT8 against FP32 on x86-cpu, one line per axis, the numbers from the steps."""
    out, html_path = run_folder
    text = html_path.read_text()
    body = text[text.index("<body>"):]
    assert body.index('<section id="verdict">') < body.index("<h2>")  # the first thing after the title
    section = re.search(r'<section id="verdict">(.*?)</section>', text, flags=re.S).group(1)
    axes = dict(re.findall(r'<li class="axis axis-(\w+)" data-axis="(\w+)">', section)[i][::-1]
                for i in range(section.count("<li")))
    assert set(axes) == {"latency", "accuracy", "size", "check"}
    comparison = json.loads((out / "x86-cpu" / "profile-int8.json").read_text())["comparison"]
    expected = {"slower": "worse", "faster": "better", "same": "same"}[comparison["verdict"]]
    assert axes["latency"] == expected
    assert f"latency {comparison['verdict']}: INT8/FP32 {comparison['ratio']:.3f}x at p50" in section
    accuracy = json.loads((out / "compare.json").read_text())["accuracy"]
    assert f"INT8 top-1 {100 * accuracy['b']:.1f}% vs FP32 {100 * accuracy['a']:.1f}%" in section
    sizes = {p.name: p.stat().st_size for p in out.glob("*.onnx")}
    assert f"INT8/FP32 {sizes['quantize.onnx'] / sizes['optimize.onnx']:.3f}x" in section and axes["size"] == "better"
    state = re.search(r'<div class="target-verdict (\w+)" data-target="x86-cpu">', section).group(1)
    assert state == ("bad" if "worse" in axes.values() else "good" if axes["latency"] == "better" else "neutral")


def test_summary_pairs_fp32_and_int8(run_folder):
    out, _ = run_folder
    rows = {name: (fp32, int8) for name, fp32, int8 in summary(load_run(out))}
    sizes = {p.name: p.stat().st_size / 1024 for p in out.glob("*.onnx")}
    assert rows["size (KiB)"] == (sizes["optimize.onnx"], sizes["quantize.onnx"])
    accuracy = json.loads((out / "compare.json").read_text())["accuracy"]
    assert rows["top-1 (%)"] == (100 * accuracy["a"], 100 * accuracy["b"])
    profile = json.loads((out / "x86-cpu" / "profile.json").read_text())
    int8 = json.loads((out / "x86-cpu" / "profile-int8.json").read_text())
    assert rows["latency p50 (ms)"] == (profile["latency_ms"]["p50"], int8["latency_ms"]["p50"])


def test_report_finds_step_reports_from_any_directory(run_folder, tmp_path):
    """run.json records paths as `edgepack run` was given them (relative to where it ran); the
    report still finds each step's JSON inside the run folder."""
    import shutil

    out, _ = run_folder
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    run = json.loads((moved / "run.json").read_text())
    for step in run["steps"]:
        if step["report"]:
            step["report"] = str(Path("somewhere-else") / Path(step["report"]).relative_to(out))
    (moved / "run.json").write_text(json.dumps(run))
    data = load_run(moved)
    assert {k[0] for k in data.reports} == {s["id"] for s in run["steps"] if s["report"]}


def test_report_of_a_folder_without_a_run_is_refused(tmp_path):
    assert_one_line_error(edgepack_cli("report", tmp_path, "-o", tmp_path / "r.html"), "not a run folder",
                          str(tmp_path))


# ---------------------------------------------------------------- in a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium: installed with apt-get when missing and apt works, else the test skips."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if not shutil.which("apt-get"):
        pytest.skip("no chromium and no apt-get to install it")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"cannot install chromium: {exc}")
        if done.returncode != 0:
            pytest.skip(f"cannot install chromium ({' '.join(command)}): {done.stderr.strip()[-200:]}")
    path = shutil.which("chromium")
    if not path:
        pytest.skip("apt-get installed chromium but it is not on PATH")
    return path


def test_report_renders_in_headless_chromium(run_folder, chromium, tmp_path):
    from PIL import Image

    _, html_path = run_folder
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", html_path.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    svgs = re.findall(r"<svg.*?</svg>", dom, flags=re.S)
    assert len(svgs) == 6 and all(svg.count("<path") > 5 for svg in svgs), dom[:500]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, "--window-size=1280,2000", f"--screenshot={shot}", html_path.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20  # not a blank page
    # the charts' coloured bars are drawn: plenty of matplotlib's blue (#1f77b4)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    blue = (np.abs(rgb - np.array([0x1F, 0x77, 0xB4])).sum(axis=2) < 30).mean()
    assert blue > 0.01


MEASURE = """<script>
const box = document.getElementById("verdict").getBoundingClientRect();
const cells = [...document.querySelectorAll("section h2")].find(h => h.textContent === "Pipeline")
  .parentElement.querySelector("table").querySelectorAll("tbody td:first-child");
const tallest = Math.max(...[...cells].map(c => c.getBoundingClientRect().height));
const line = parseFloat(getComputedStyle(cells[0]).lineHeight) || 20;
document.title = JSON.stringify({top: box.top, bottom: box.bottom, height: innerHeight, width: innerWidth,
                                 tallest: tallest, line: line});
</script>"""


def test_verdict_is_on_the_first_screen_of_a_laptop(run_folder, chromium, tmp_path):
    """At 1366x768 the verdict is visible without scrolling (measured by the browser's layout, and
    seen in the screenshot), and no step name wraps one letter per line."""
    from PIL import Image

    _, html_path = run_folder
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace("</body>", MEASURE + "</body>"))
    flags = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1366,768"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    layout = json.loads(html.unescape(re.search(r"<title>(.*?)</title>", dom, flags=re.S).group(1)))
    # the viewport: 1366 wide; headless Chromium leaves ~625 of the 768 (as a browser's bars would)
    assert layout["width"] == 1366 and 500 < layout["height"] <= 768, layout
    assert 0 <= layout["top"] < layout["bottom"] <= layout["height"], layout
    assert layout["tallest"] < 2 * layout["line"] + 12, layout  # step ids on one line each
    shot = tmp_path / "first-screen.png"
    subprocess.run([*flags, f"--screenshot={shot}", html_path.as_uri()], capture_output=True, timeout=120)
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    assert rgb.shape == (768, 1366, 3)
    # the verdict's left border, red (#c62828) or green (#2e7d32), and its tinted box are on screen
    border = {"bad": (0xC6, 0x28, 0x28), "good": (0x2E, 0x7D, 0x32), "neutral": (0x88, 0x88, 0x88)}
    state = re.search(r'<div class="target-verdict (\w+)"', html_path.read_text()).group(1)
    seen = (np.abs(rgb - np.array(border[state])).sum(axis=2) < 30).mean()
    assert seen > 0.001, state
