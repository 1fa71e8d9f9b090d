"""Numbers as people read them in the report: grouped digits, about four significant figures,
never scientific notation (1,070 not 1.07e+03; 0.00017 not 1.7e-04)."""
from __future__ import annotations

import math


def number(value: float | int | None, digits: int = 4) -> str:
    """`digits` significant figures in plain notation; integers in full with thousands separators."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    value = float(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    size = abs(value)
    if size == 0 or size < 1e-12:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(size)))
    text = f"{value:,.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
