"""Flax NNX model code. It names logical axes only and never a mesh axis."""

from jaxlm.model.transformer import Transformer, param_count

__all__ = ["Transformer", "param_count"]
