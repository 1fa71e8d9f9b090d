"""Graph passes: one module per pass; `pipeline` builds the optimize PassManager."""
from edgepack.passes.pipeline import build_pipeline, optimize

__all__ = ["build_pipeline", "optimize"]
