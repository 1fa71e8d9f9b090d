"""Quantization: QDQ placement per target, insertion, checking, comparison."""
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.quantize import quantize

__all__ = ["check_qdq", "quantize"]
