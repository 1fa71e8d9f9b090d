"""compare: how far model B's outputs (and the intermediate tensors both compute) are from model A's.

Outputs and accuracy are measured on unmodified sessions, each model run as its runtime runs it:
ONNX Runtime with all graph optimizations (QDQ fused into integer kernels: the deployed model), or,
for TensorRT targets, which cannot run here, the exact QDQ math (ORT with optimizations off), and the
result says which. Per-layer statistics come from separate instrumented sessions (every compared
tensor made a graph output, which stops some fusions): a diagnosis, never the headline number.

Layers are paired by what they compute, not by tensor name. A tensor's signature is its producer's
op, attributes, constant-input shapes and the signatures of its inputs; Q/DQ, Identity and ops that
folding absorbs (BatchNormalization, Add/Sub/Mul/Div with a constant) pass their input's signature
on, and of several tensors with one signature the last counts. So Conv -> BN in A pairs the BN output
with the folded Conv's output in B, never the pre-BN tensor that shares its name.

Per tensor, accumulated over the data in constant memory:
    SQNR   = 10 log10( sum a^2 / sum (a - b)^2 )   dB; higher is closer
    cosine = sum ab / sqrt(sum a^2 * sum b^2)
    max abs error, and for [N, classes] outputs the top-1 agreement of B with A (and accuracy with labels).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.calib.calibrate import FLOATS, _with_outputs
from edgepack.calib.data import has_labels, input_specs_of, open_dataset
from edgepack.errors import EdgepackError
from edgepack.graph import const_array
from edgepack.keywords import cli_keywords

SCHEMA = "edgepack.compare/1"
RUNTIMES = {
    "ort": "ONNX Runtime, all graph optimizations (QDQ fused into integer kernels, as deployed)",
    "qdq-math": "ONNX Runtime, graph optimizations off: the exact QDQ math (the proxy for TensorRT, "
                "which cannot run here)",
}
_ALIAS_OPS = {"QuantizeLinear", "DequantizeLinear", "Identity", "BatchNormalization"}
_AFFINE_OPS = {"Add", "Sub", "Mul", "Div"}


def sqnr_from_energy(signal: float, noise: float) -> float:
    """10 log10(signal / noise) in dB: inf for no noise, -inf for no signal."""
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


class _Stats:
    def __init__(self):
        self.aa = self.bb = self.ab = self.ee = 0.0
        self.max_abs = 0.0
        self.agree = self.total = 0
        self.correct = {"a": 0, "b": 0}

    def update(self, a: np.ndarray, b: np.ndarray, labels: np.ndarray | None) -> None:
        a64, b64 = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
        e = a64 - b64
        self.aa += float(a64 @ a64)
        self.bb += float(b64 @ b64)
        self.ab += float(a64 @ b64)
        self.ee += float(e @ e)
        self.max_abs = max(self.max_abs, float(np.abs(e).max()) if e.size else 0.0)
        if a.ndim == 2 and a.shape[1] > 1:
            pa, pb = a.argmax(axis=1), b.argmax(axis=1)
            self.agree += int((pa == pb).sum())
            self.total += len(pa)
            if labels is not None:
                self.correct["a"] += int((pa == labels).sum())
                self.correct["b"] += int((pb == labels).sum())

    def result(self) -> dict:
        sqnr = sqnr_from_energy(self.aa, self.ee)
        cosine = self.ab / math.sqrt(self.aa * self.bb) if self.aa > 0 and self.bb > 0 else 1.0
        return {"sqnr_db": sqnr, "cosine": cosine, "max_abs_error": self.max_abs,
                "top1_agreement": self.agree / self.total if self.total else None}


@dataclasses.dataclass
class CompareResult:
    outputs: list[dict]                 # [{name, sqnr_db, cosine, max_abs_error, top1_agreement}]
    layers: list[dict]                  # [{tensor, tensor_b, sqnr_db, cosine, max_abs_error}]
    accuracy: dict | None               # {a, b, samples, top1_agreement} with labels
    runtime: dict                       # {"a": how A ran, "b": how B ran}
    reshaped_tensors: list[str] = dataclasses.field(default_factory=list)
    a: str | None = None
    b: str | None = None
    from_model: dict = dataclasses.field(default_factory=dict)  # {"target": ..., "preprocess": ...} read from B

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "a": self.a, "b": self.b, "runtime": self.runtime, "outputs": self.outputs,
                "accuracy": self.accuracy, "layers": self.layers, "reshaped_tensors": self.reshaped_tensors,
                "from_model": self.from_model}

    def __getitem__(self, key: str):  # dict-style access, as the JSON reads
        return self.to_json()[key]

    def text(self) -> str:
        return format_comparison(self)


def runtime_for(target=None, runtime_name: str | None = None) -> str:
    """How B runs: `runtime_name` if given, else the target's runtime as this machine can run it."""
    if runtime_name is not None:
        if runtime_name not in RUNTIMES:
            raise EdgepackError(f"unknown runtime '{runtime_name}'", hint=f"use one of {', '.join(RUNTIMES)}")
        return runtime_name
    if target is not None:
        from edgepack.targets import load_target

        return "qdq-math" if load_target(target).is_tensorrt else "ort"
    return "ort"


@cli_keywords(aliases={"runtime": "runtime_name"})
def compare(a, b, data, *, target=None, runtime_name: str | None = None, limit: int | None = None,
            layers: bool = True, labels: bool | str = True, batch_size: int = 64,
            label_key: str = "labels", preprocess=None) -> CompareResult:
    """Run A and B (paths or onnx-ir models) on the same data; statistics per output, accuracy with
    labels, and per paired intermediate tensor. B runs as `target`'s runtime runs it here (see
    RUNTIMES; `runtime_name` overrides); A, the reference, runs in ORT as deployed.

    Top-1 accuracy is computed when `labels` and the data holds an array named `label_key` (an
    .npz), `data` is `FILE.npz:ARRAY:LABELS`, `label_key` names another file (`FILE.npz:ARRAY`),
    or `data` is a calibration folder whose manifest names an evaluation file and its labels, or an
    image folder has labels (calib/images.py); `labels` may be that key or file itself (`--labels`).
    `preprocess`: an `edgepack.calib.preprocess.Preprocess` for the data.

    Without `target`/`runtime_name`, B runs as the target recorded in its metadata (by `quantize`)
    runs it; without `preprocess`, the data is prepared as recorded there. The result's
    `from_model` says what was read, and the text says so."""
    from edgepack import io
    from edgepack.quant.origin import recorded_defaults

    if isinstance(labels, str):
        labels, label_key = True, labels
    names = (str(a) if not isinstance(a, ir.Model) else None, str(b) if not isinstance(b, ir.Model) else None)
    a = io.load(a) if not isinstance(a, ir.Model) else a
    b = io.load(b) if not isinstance(b, ir.Model) else b
    from_model, target, data = recorded_defaults(b, target=target, data=data, preprocess=preprocess,
                                                 need_target=runtime_name is None)
    how = runtime_for(target, runtime_name)
    outputs = [o.name for o in a.graph.outputs]
    if [o.name for o in b.graph.outputs] != outputs:
        raise EdgepackError(f"A has outputs {outputs}, B {[o.name for o in b.graph.outputs]}: the models are "
                            "not comparable", hint="compare a model with its own optimized or quantized version")
    sa, sb = runtime.session(a), runtime.session(b, optimize=how == "ort")
    dataset = open_dataset(data, input_specs_of(sa), batch_size=batch_size, limit=limit,
                           labels=label_key if labels and has_labels(data, label_key) else None,
                           preprocess=preprocess)
    use_labels = dataset.label_key is not None
    stats = {n: _Stats() for n in outputs}
    for batch in dataset.batches(with_labels=use_labels):
        y = batch.pop("__labels__", None)
        ra, rb = runtime.run(sa, outputs, batch), runtime.run(sb, outputs, batch)
        for n, x, z in zip(outputs, ra, rb):
            if x.shape != z.shape:
                raise EdgepackError(f"output '{n}' has shape {list(x.shape)} in A and {list(z.shape)} in B: "
                                    "the models are not comparable")
            stats[n].update(x, z, y)
    first = stats[outputs[0]]
    accuracy = None
    if use_labels and first.total:
        accuracy = {"a": first.correct["a"] / first.total, "b": first.correct["b"] / first.total,
                    "samples": first.total, "top1_agreement": first.agree / first.total}
    layer_rows, reshaped = (_layer_stats(a, b, dataset, how) if layers else ([], []))
    return CompareResult([{"name": n, **stats[n].result()} for n in outputs], layer_rows, accuracy,
                         {"a": RUNTIMES["ort"], "b": RUNTIMES[how]}, reshaped, *names, from_model)


def compare_models(a, b, data, **options) -> dict:
    """`compare` as a JSON dict (kept for callers of the first API)."""
    return compare(a, b, data, **options).to_json()


def _layer_stats(a: ir.Model, b: ir.Model, dataset, how: str) -> tuple[list[dict], list[str]]:
    """Per paired tensor, from instrumented copies of A and B (a diagnosis: extra outputs change fusions)."""
    from edgepack import io

    io.infer_shapes(a)
    io.infer_shapes(b)
    pairs = pair_tensors(a, b)
    if not pairs:
        return [], []
    va, vb = _float_values(a), _float_values(b)
    pairs = [(x, y) for x, y in pairs if x in va and y in vb]
    sa = runtime.session(_with_outputs(a, [va[x] for x, _ in pairs]))
    sb = runtime.session(_with_outputs(b, [vb[y] for _, y in pairs]), optimize=how == "ort")
    names_a, names_b = [x for x, _ in pairs], [y for _, y in pairs]
    stats = {x: _Stats() for x in names_a}
    reshaped: set[str] = set()
    for batch in dataset.batches(with_labels=False):
        for x, y, ra, rb in zip(names_a, names_b, sa.run(names_a, batch), sb.run(names_b, batch)):
            if ra.shape != rb.shape:
                reshaped.add(x)  # e.g. channels removed by optimize
            elif x not in reshaped:
                stats[x].update(ra, rb, None)
    rows = [{"tensor": x, "tensor_b": y, **{k: v for k, v in stats[x].result().items() if k != "top1_agreement"}}
            for x, y in pairs if x not in reshaped]
    return rows, sorted(reshaped)


def _float_values(model: ir.Model) -> dict[str, ir.Value]:
    return {o.name: o for node in model.graph for o in node.outputs if o.dtype in FLOATS}


def pair_tensors(a: ir.Model, b: ir.Model) -> list[tuple[str, str]]:
    """(tensor in A, tensor in B) computing the same thing, in A's order; graph inputs and outputs
    excluded (outputs are compared on their own)."""
    sig_a, sig_b = _canonical(a), _canonical(b)
    skip = {v.name for v in (*a.graph.inputs, *a.graph.outputs)}
    return [(name, sig_b[s]) for s, name in sig_a.items() if s in sig_b and name not in skip
            and sig_b[s] not in {v.name for v in (*b.graph.inputs, *b.graph.outputs)}]


def _canonical(model: ir.Model) -> dict[str, str]:
    """signature -> the last tensor (in graph order) that carries it. Constant inputs (weights, also
    behind a DQ) do not enter signatures: folding and quantization change them, not what is computed."""
    sig: dict[ir.Value, str] = {v: f"input:{v.name}" for v in model.graph.inputs if not v.is_initializer()}
    constant: set[ir.Value] = set()
    last: dict[str, str] = {}
    counts: dict[str, int] = {}
    for node in model.graph:
        inputs = [v for v in node.inputs if v is not None and v not in constant and const_array(v) is None]
        if not inputs:
            constant.update(node.outputs)
            continue
        n_inputs = len([v for v in node.inputs if v is not None])
        if node.domain == "" and (node.op_type in _ALIAS_OPS or node.op_type in _AFFINE_OPS and
                                  len(inputs) == 1 and n_inputs == 2):
            s = sig.get(inputs[0], f"?{inputs[0].name}")
            for out in node.outputs:
                sig[out] = s
                last[s] = out.name
            continue
        parts = [node.domain, node.op_type, _attributes(node)] + [sig.get(v, f"?{v.name}") for v in inputs]
        base = hashlib.sha1("|".join(parts).encode()).hexdigest()
        # identical siblings (same op on the same inputs): the n-th of them in graph order
        counts[base] = counts.get(base, 0) + 1
        for i, out in enumerate(node.outputs):
            s = f"{base}#{counts[base]}:{i}"
            sig[out] = s
            last[s] = out.name
    return last


def _attributes(node: ir.Node) -> str:
    items = []
    for name, attr in sorted(node.attributes.items()):
        value = attr.value
        if isinstance(value, (int, float, str)) or (isinstance(value, (list, tuple)) and
                                                    all(isinstance(x, (int, float, str)) for x in value)):
            items.append(f"{name}={value}")
    return ",".join(items)


def format_comparison(result, top: int = 10) -> str:
    result = result.to_json() if isinstance(result, CompareResult) else result
    from edgepack.quant.origin import describe_defaults

    lines = describe_defaults(result.get("from_model") or {})
    lines += [f"B ran as: {result['runtime']['b']}"] if result.get("runtime") else []
    lines.append(f"{'output':<24} {'SQNR dB':>9} {'cosine':>9} {'max abs err':>12} {'top-1 agree':>12}")
    for o in result["outputs"]:
        agree = "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.2%}"
        lines.append(f"{o['name'][:24]:<24} {o['sqnr_db']:>9.2f} {o['cosine']:>9.5f} {o['max_abs_error']:>12.4g} {agree:>12}")
    if result["accuracy"]:
        acc = result["accuracy"]
        lines.append(f"top-1 accuracy on {acc['samples']} labelled samples: A {acc['a']:.2%}, B {acc['b']:.2%} "
                     f"({100 * (acc['b'] - acc['a']):+.2f} points); B agrees with A on "
                     f"{acc['top1_agreement']:.2%}")
    if result["layers"]:
        worst = sorted(result["layers"], key=lambda r: r["sqnr_db"])[:top]
        lines += ["", f"{'least accurate paired tensors (instrumented run)':<48} {'SQNR dB':>9} {'cosine':>9}"]
        lines += [f"{r['tensor'][:48]:<48} {r['sqnr_db']:>9.2f} {r['cosine']:>9.5f}" for r in worst]
    return "\n".join(lines)
