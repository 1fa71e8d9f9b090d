"""Shared test utilities: models from ONNX text, running them in ONNX Runtime, the shared data."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
#: the real models and data: $EDGEPACK_SHARED, else ../shared beside this checkout
SHARED = Path(os.environ.get("EDGEPACK_SHARED") or REPO.parent / "shared").expanduser()
SHARED_MODELS = SHARED / "models"
SHARED_DATA = SHARED / "data"
SHARED_HOWTO = (f"the real models and data are not at {SHARED}: put the shared/ folder (models/ and data/, "
                "described in its README.md and data/SOURCES.md) beside this checkout as ../shared, or "
                "point EDGEPACK_SHARED at it, e.g. EDGEPACK_SHARED=/data/edgepack-shared pytest")

requires_shared = pytest.mark.skipif(not SHARED_MODELS.is_dir(), reason=SHARED_HOWTO)


def model_from_text(text: str) -> ir.Model:
    """An onnx-ir model from ONNX text syntax (onnx.parser), checked."""
    proto = onnx.parser.parse_model(text)
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def save_text_model(text: str, path: Path) -> Path:
    proto = onnx.parser.parse_model(text)
    onnx.save(proto, path)
    return path


def run_ort(model: ir.Model | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model (in memory or a file) on the CPU in ONNX Runtime."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if isinstance(model, ir.Model):
        data = ir.serde.serialize_model(model).SerializeToString()
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    else:
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def check(model: ir.Model) -> None:
    """onnx.checker with full shape inference."""
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def edgepack_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a fresh interpreter."""
    return subprocess.run(
        [sys.executable, "-m", "edgepack", *map(str, args)],
        capture_output=True, text=True, cwd=cwd or REPO, timeout=600,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str, code: int = 1) -> None:
    """A user mistake: exit `code`, one `error:` line on stderr naming what and where, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
