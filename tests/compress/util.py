"""Test models for the compression tests: ONNX text whose weight inputs become initializers."""
from __future__ import annotations

import numpy as np
import onnx_ir as ir

from tests.helpers import model_from_text


def model_with_weights(text: str, weights: dict[str, np.ndarray]) -> ir.Model:
    """Parse `text` (weights declared as graph inputs), then turn those inputs into initializers."""
    model = model_from_text(text)
    for value in list(model.graph.inputs):
        if value.name in weights:
            model.graph.inputs.remove(value)
            value.const_value = ir.tensor(weights[value.name], name=value.name)
            model.graph.register_initializer(value)
    return model


def copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def randn(rng, *shape, scale=0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)
