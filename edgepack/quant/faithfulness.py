"""Runtime faithfulness: does the runtime, running a QDQ model as it deploys it, compute what the
QDQ graph says?

ONNX Runtime with graph optimizations on fuses DQ -> op -> Q into integer kernels (QLinearConv,
QGemm, ...): that is the deployed model. With optimizations off it evaluates every Q and DQ in float:
the exact QDQ math, which is also what TensorRT is specified to compute. The two differ by rounding
(a fused kernel requantizes once), a small fraction of the quantization error itself:

    quantization error  e_q = QDQ math - float model
    runtime error       e_r = fused    - QDQ math          faithful: |e_r| well below |e_q|

A CPU whose int8 dot product saturates (x86 without VNNI running u8 x s8 kernels on int8 weights)
adds errors as large as the quantization error or larger: the check names that cause.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

from edgepack import runtime
from edgepack.calib.data import input_specs_of, open_dataset

logger = logging.getLogger(__name__)

# the runtime error may reach this fraction of the quantization error's energy (-3 dB: half)
MARGIN_DB = 3.0
# without a float model to compare with: the fused outputs must match the QDQ math this closely
MIN_RUNTIME_SQNR_DB = 25.0


@dataclasses.dataclass
class RuntimeCheck:
    samples: int
    runtime_sqnr_db: float            # fused vs QDQ math, first output
    quantization_sqnr_db: float | None  # QDQ math vs the float model, first output
    top1_agreement: float | None      # fused vs QDQ math, for [N, classes] outputs
    cpu_flags: str
    ok: bool
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) and v < 0 else
                    (1e9 if isinstance(v, float) and math.isinf(v) else v))
                for k, v in dataclasses.asdict(self).items()}


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    from edgepack.quant.compare import sqnr_from_energy

    ref = reference.astype(np.float64).ravel()
    err = ref - other.astype(np.float64).ravel()
    return sqnr_from_energy(float(ref @ ref), float(err @ err))


def check_runtime(qdq_model, data=None, *, float_model=None, deployed=None, samples: int = 16,
                  target=None) -> RuntimeCheck:
    """Run `qdq_model` (path or onnx-ir Model) as ONNX Runtime deploys it (or the built artifact
    `deployed`, a path) and as plain QDQ math on `samples` inputs from `data` (seeded random inputs
    when None); compare, and with `float_model` also measure the quantization error that the
    runtime error is judged against."""
    from edgepack.cpu import int8_dot_saturates, int8_summary

    fused = runtime.session(deployed if deployed is not None else qdq_model, optimize=True)
    exact = runtime.session(qdq_model, optimize=False)
    reference = runtime.session(float_model) if float_model is not None else None
    a, b, f = [], [], []
    for feeds in _feeds(fused, data, samples):
        a.append(fused.run(None, feeds)[0])
        b.append(exact.run(None, feeds)[0])
        if reference is not None:
            f.append(reference.run(None, feeds)[0])
    fused_out, exact_out = np.concatenate(a), np.concatenate(b)
    r = sqnr_db(exact_out, fused_out)
    q = sqnr_db(np.concatenate(f), exact_out) if f else None
    agree = None
    if exact_out.ndim == 2 and exact_out.shape[1] > 1:
        agree = float((exact_out.argmax(1) == fused_out.argmax(1)).mean())
    ok = r >= (q - MARGIN_DB if q is not None and math.isfinite(q) else MIN_RUNTIME_SQNR_DB)
    flags = int8_summary()
    message = None
    if not ok:
        judged = f"quantization error {q:.1f} dB" if q is not None else f"the {MIN_RUNTIME_SQNR_DB:.0f} dB floor"
        cause, fix = "ONNX Runtime's fused integer kernels do not compute the QDQ math", "report the model"
        if int8_dot_saturates() and _has_int8_weights(qdq_model):
            cause = ("this CPU has no VNNI, so ONNX Runtime's u8 x s8 kernels add product pairs in int16 "
                     "and saturate")
            fix = "quantize with -t x86-cpu (7-bit weights: exact U8S8 kernels on every x86 CPU)"
        where = f" for {getattr(target, 'name', target)}" if target is not None else ""
        message = (f"INT8 model{where} as ONNX Runtime runs it differs from its QDQ math: SQNR {r:.1f} dB "
                   f"(judged against {judged}, top-1 agreement {_pct(agree)}) on {len(fused_out)} samples, "
                   f"CPU flags {flags}: {cause}. hint: {fix}")
    return RuntimeCheck(len(fused_out), r, q, agree, flags, ok, message)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _has_int8_weights(model) -> bool:
    import onnx_ir as ir

    from edgepack.graph import const_array

    if not isinstance(model, ir.Model):
        from edgepack import io

        model = io.load(model)
    for node in model.graph:
        if node.op_type == "DequantizeLinear":
            q = const_array(node.inputs[0])
            if q is not None and q.dtype == np.int8 and q.size > 1:
                return True
    return False


def _feeds(session, data, samples: int):
    if data is None:
        for seed in range(min(samples, 4)):
            yield runtime.random_feeds(session, batch=max(1, samples // 4), seed=seed)
        return
    dataset = open_dataset(data, input_specs_of(session), batch_size=min(samples, 16), limit=samples)
    yield from dataset
