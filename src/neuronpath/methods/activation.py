"""Max-activation path (App. C.2): the top-k signed clean activations of each layer."""

from __future__ import annotations

import torch

from ..engine.attribution import CleanPass
from ..engine.neurons import top_k
from .base import MethodOutput, PathMethod


def activation_path(clean: CleanPass, k: int = 1) -> torch.Tensor:
    """Max-activation path (App. C.2): the top-k signed clean activations per layer (summed
    over tokens for multi-token policies).  Returns (images, layers, k)."""
    return torch.stack([top_k(a.sum(1), k) for a in clean.acts], dim=1)


METHOD = PathMethod(
    "activation",
    "max-activation path (App. C.2): the largest clean activation per layer",
    lambda adapter, pixels, clean, config, k, options: MethodOutput(activation_path(clean, k)),
    title="Activation path",
)
