"""Max-activation path (App. C.2): the top-k signed clean activations of each layer."""

from __future__ import annotations

import torch

from ..engine.attribution import CleanPass
from ..engine.neurons import stack_layers, top_k
from .base import MethodOutput, PathMethod


def activation_path(clean: CleanPass, k: int = 1) -> torch.Tensor:
    """Max-activation path (App. C.2): the top-k signed clean activations per layer (summed
    over tokens for multi-token policies).  Returns (images, layers, k)."""
    return top_k(activation_scores(clean), k)


def activation_scores(clean: CleanPass) -> torch.Tensor:
    """Each unit's clean activation, summed over tokens: (images, layers, widest layer)."""
    return stack_layers([a.sum(1) for a in clean.acts])


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    scores = activation_scores(clean)
    return MethodOutput(top_k(scores, k), scores=scores)


METHOD = PathMethod(
    "activation",
    "max-activation path (App. C.2): the largest clean activation per layer",
    _method,
    title="Activation path",
)
