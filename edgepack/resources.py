"""Finds the data that ships with edgepack (targets, the example model, its calibration set).

In a source checkout the data lives at the repository root (`targets/`, `calibration/`); an
installed wheel carries a copy under `edgepack/_data/` (see setup.py).
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent


def data_dir(name: str) -> Path:
    """`targets` or `calibration`: the packaged copy if installed, else the checkout's folder."""
    packaged = PACKAGE_DIR / "_data" / name
    return packaged if packaged.is_dir() else REPO_ROOT / name


def example_model() -> Path:
    """The bundled example: a CNN trained on scikit-learn's digits by scripts/train_digits.py."""
    return PACKAGE_DIR / "examples" / "digits_cnn.onnx"
