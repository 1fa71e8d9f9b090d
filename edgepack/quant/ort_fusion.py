"""What ONNX Runtime really runs: the graph it optimizes a QDQ model into, read back.

A QDQ model is fast on ORT's CPU only where its graph transformers fuse DQ -> op -> Q into an
integer kernel (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, QLinearConcat, ...). Whatever they
leave is work the float model did not do:

    DQ on a constant     a weight dequantized at every inference (its consumer stayed float)
    Q / DQ on an activation   a float island inside the INT8 graph (or its entry and exit)
    float Conv/MatMul/Gemm    a weighted layer that runs in float

`fusion_report(path)` lets ORT write its optimized graph (`SessionOptions.optimized_model_filepath`,
the same level `build` uses) and lists these; `build` records it in the manifest, `check-qdq`
prints it and tests assert it.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from collections import Counter
from typing import Any

INTEGER_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "ConvInteger",
                   "MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits")
FLOAT_WEIGHTED = ("Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "ConvTranspose")


@dataclasses.dataclass
class FusionReport:
    ops: dict[str, int]                       # op type -> count in the optimized graph
    dq_on_constants: list[str]                # DequantizeLinear nodes on initializers
    activation_qdq: list[str]                 # Q / DQ nodes on activations
    float_weighted: list[str]                 # weighted layers that run in float
    integer_kernels: int

    @property
    def clean(self) -> bool:
        """No weight is dequantized at run time (the INT8 graph does no work the float one did not)."""
        return not self.dq_on_constants

    def to_json(self) -> dict[str, Any]:
        return {"ops": self.ops, "integer_kernels": self.integer_kernels,
                "dq_on_constants": self.dq_on_constants, "activation_qdq": self.activation_qdq,
                "float_weighted": self.float_weighted}

    def summary(self) -> str:
        return (f"{self.integer_kernels} integer kernels, {len(self.float_weighted)} float weighted layers, "
                f"{len(self.dq_on_constants)} weight DQ run at inference, "
                f"{len(self.activation_qdq)} activation Q/DQ left")


def fusion_report(model_path: str | os.PathLike, *, level: str = "extended") -> FusionReport:
    """ORT's optimized graph of the model at `model_path`, read back (weights not loaded)."""
    import onnx
    import onnxruntime as ort

    from edgepack.runtime import quiet_onnxruntime

    quiet_onnxruntime()
    levels = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    with tempfile.TemporaryDirectory(prefix="edgepack-fusion-") as folder:
        out = os.path.join(folder, "optimized.onnx")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = levels[level]
        options.optimized_model_filepath = out
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                         "optimized.onnx.data")
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes",
                                         "1024")
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        graph = onnx.load(out, load_external_data=False).graph
    return report_of_graph(graph)


def report_of_graph(graph) -> FusionReport:
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    ops = Counter((f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type for n in graph.node)
    dq_const, act_qdq, float_weighted = [], [], []
    for n in graph.node:
        label = n.name or n.output[0]
        if n.op_type == "DequantizeLinear" and n.input[0] in constants:
            dq_const.append(label)
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            act_qdq.append(label)
        elif n.op_type in FLOAT_WEIGHTED and n.domain in ("", "ai.onnx", "com.microsoft", "com.microsoft.nchwc"):
            float_weighted.append(label)
    integer = sum(c for op, c in ops.items() if op.split("::")[-1] in INTEGER_KERNELS)
    return FusionReport(dict(ops), dq_const, act_qdq, float_weighted, integer)
