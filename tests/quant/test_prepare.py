"""FoldConvBiasAddPass: a constant per-channel Add after a Conv becomes the Conv's bias."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.quant.prepare import FoldConvBiasAddPass, prepare
from tests.helpers import check, model_from_text, run_ort

#   x ─► Conv(W) ─► Add(C[2,1,1]) ─► Relu ─► y        (the CNTK exporter's form)
#   x ─► Conv(W, b) ─► Add(C[1,2,1,1]) ─► y            (a bias already there: b + C)
BIAS_ADD = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 1, 4, 4] x) => (float[N, 2, 4, 4] y) <float[2, 1, 1, 1] W = {0.5, -2.0}, float[2, 1, 1] C = {1.0, -3.0}> {
  c = Conv (x, W)
  s = Add (c, C)
  y = Relu (s)
}
"""
WITH_BIAS = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 1, 4, 4] x) => (float[N, 2, 4, 4] y) <float[2, 1, 1, 1] W = {0.5, -2.0}, float[2] b = {0.25, 0.5},
    float[1, 2, 1, 1] C = {1.0, -3.0}> {
  c = Conv (x, W, b)
  y = Add (C, c)
}
"""
# not foldable: the constant varies along a spatial axis
SPATIAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 1, 4, 4] x) => (float[N, 2, 4, 4] y) <float[2, 1, 1, 1] W = {0.5, -2.0}, float[4] C = {1.0, -3.0, 2.0, 0.0}> {
  c = Conv (x, W)
  y = Add (c, C)
}
"""


@pytest.mark.parametrize("text, ops_after", [(BIAS_ADD, ["Conv", "Relu"]), (WITH_BIAS, ["Conv"]),
                                             (SPATIAL, ["Conv", "Add"])])
def test_fold_bias_add(text, ops_after):
    model = model_from_text(text)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((3, 1, 4, 4)).astype(np.float32)}, {"x": np.linspace(-5, 5, 32, dtype=np.float32).reshape(2, 1, 4, 4)}]
    before = [run_ort(model_from_text(text), f)[0] for f in feeds]
    result = FoldConvBiasAddPass()(model)
    assert result.modified == (ops_after != ["Conv", "Add"])
    assert [n.op_type for n in model.graph] == ops_after
    assert [o.name for o in model.graph.outputs] == ["y"]
    if text is BIAS_ADD:  # the Conv output takes the Add output's name: calibrated ranges stay valid
        assert model.graph[0].outputs[0].name == "s"
    for f, ref in zip(feeds, before):
        np.testing.assert_allclose(run_ort(model, f)[0], ref, rtol=1e-6, atol=1e-6)
    check(model)
    assert not FoldConvBiasAddPass()(model).modified  # a second run changes nothing
    assert not prepare(model)
