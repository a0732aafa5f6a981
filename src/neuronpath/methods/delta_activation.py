"""Deviation path: a gradient-free sanity method.  Each layer's top-k units by
|h - m|, the clean activation's distance from its mean over ``find --reference``'s images
(summed over the read tokens), with no gradient and no intervention.

It is the trivial method a ground-truth benchmark must not reward: a planted unit that is far
louder than its layer on triggered images is found by it alone (``docs/guide/ground-truth.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.attribution import CleanPass
from ..engine.neurons import stack_layers, top_k
from .base import MethodOptions, MethodOutput, PathMethod, reference_of


@dataclass(frozen=True)
class DeltaActivationOptions(MethodOptions):
    """No options of its own; it needs ``find --reference``."""

    @property
    def needs_reference(self) -> bool:
        return True


def deviation_scores(clean: CleanPass, means: list[torch.Tensor]) -> torch.Tensor:
    """|h - m| of every unit, summed over the read tokens: (images, layers, widest layer)."""
    return stack_layers([(a - m.to(a)[None]).abs().sum(1) for a, m in zip(clean.acts, means)])


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    scores = deviation_scores(clean, reference_of(clean, "delta-activation"))
    return MethodOutput(top_k(scores, k), scores=scores)


METHOD = PathMethod(
    "delta-activation",
    "deviation path (a gradient-free sanity method): the largest |activation - reference "
    "mean| per layer, over find --reference's images",
    _method,
    options=DeltaActivationOptions,
    title="Delta-activation path",
    units=("neurons",),
    undefined="its baseline is a mean of neuron values",
)
