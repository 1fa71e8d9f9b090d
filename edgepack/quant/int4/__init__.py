"""INT4 weight-only quantization of MatMul weights: the block grid (grid.py), the algorithms
that choose the codes (RTN in grid.py, gptq.py, awq.py), the two legal encodings
(encodings.py) and the quantize stage that ties them together (weight_only.py)."""
