"""Suite-wide settings: short whole-model timings (quant/speed.py) and a private speed cache."""
import os
import tempfile

# the INT8-vs-FP32 verdict and the mixed-vs-all-INT8 comparison time for 2 s by default; the
# suite checks what they decide, not how precisely, so a fraction of a second is enough
os.environ.setdefault("EDGEPACK_SPEED_SECONDS", "0.25")
os.environ.setdefault("EDGEPACK_CACHE", tempfile.mkdtemp(prefix="edgepack-test-cache-"))
