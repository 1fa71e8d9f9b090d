"""The bundled example end to end: the README's main command (`edgepack demo`).

It runs every stage that exists on the digits CNN (see scripts/train_digits.py) and ends in a
summary table. Stages are added here as the pipeline grows.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from edgepack import io
from edgepack.errors import EdgepackError
from edgepack.inspection import inspect_model
from edgepack.resources import data_dir, example_model

logger = logging.getLogger(__name__)


def evaluation_set() -> tuple[dict[str, np.ndarray], np.ndarray]:
    path = data_dir("calibration") / "digits" / "eval.npz"
    if not path.is_file():
        raise EdgepackError(f"evaluation set not found: {path}", hint="run scripts/train_digits.py")
    with np.load(path) as data:
        return {"input": data["input"]}, data["labels"]


def top1(model_path: Path, inputs: dict[str, np.ndarray], labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = session.run(None, inputs)[0]
    return float((logits.argmax(axis=1) == labels).mean())


def run_demo(out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    source = example_model()
    model = io.load(source)
    report = inspect_model(model, source)
    inputs, labels = evaluation_set()
    start = time.perf_counter()
    accuracy = top1(source, inputs, labels)
    return {
        "model": str(source),
        "output_dir": str(out_dir),
        "rows": [
            ("size (KiB)", report["size_bytes"] / 1024),
            ("params", report["params"]),
            ("MACs / sample", report["macs"]),
            ("top-1 (held-out, %)", 100 * accuracy),
        ],
        "eval_seconds": time.perf_counter() - start,
    }


def format_summary(result: dict) -> str:
    lines = [f"edgepack demo: {result['model']}", ""]
    lines += [f"  {name:<22} {value:>12,.2f}" if isinstance(value, float) else f"  {name:<22} {value:>12,}"
              for name, value in result["rows"]]
    lines += ["", f"artifacts in {result['output_dir']}"]
    return "\n".join(lines)
