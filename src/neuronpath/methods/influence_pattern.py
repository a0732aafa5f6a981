"""Influence Pattern baseline (App. C.3) as the authors' code computes it
(docs/official-code.md#influence-pattern).

The input is interpolated from the zero baseline in *normalised* space (x_k = alpha_k x, so
the baseline is the mean-colour image, not black); at every layer the neuron score is the
alpha-averaged **total derivative** dF/dh_l of the unmodified network at x_k, and the path
neuron is its argmax.  This is the authors' surrogate: there is no chain product of
layer-to-layer Jacobians (Lu et al.'s pattern influence, the paper's Eq. 9) and a layer's
choice does not depend on earlier choices.

All L layers' derivatives come from one forward and one backward over the m interpolated inputs
(docs/official-code.md#cost, item 5): a zero tensor is added to every layer's neuron vector, which
changes nothing, and the gradient w.r.t. that tensor is dF/dh_l.  Scores are per image, never shared
across a batch."""

from __future__ import annotations

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass, riemann_gradients
from ..engine.interventions import add_to_neurons
from ..engine.neurons import stack_layers, top_k
from .base import MethodOutput, PathMethod


def influence_pattern_scores(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
) -> torch.Tensor:
    """sum_k w_k dF/dh_l (alpha_k x), summed over tokens: (images, layers, n)."""
    pixels = pixels.to(adapter.device, adapter.dtype)
    layers = range(adapter.num_layers)

    def build(items, images, alpha):
        deltas = {
            l: torch.zeros(
                (len(items),) + clean.acts[l].shape[1:],
                dtype=adapter.dtype,
                device=adapter.device,
                requires_grad=True,
            )
            for l in layers
        }
        return pixels[images] * alpha[:, None, None, None], deltas, add_to_neurons(adapter, deltas)

    images = torch.arange(clean.labels.shape[0], device=adapter.device)
    grads = riemann_gradients(adapter, pixels, clean, config, images, build)
    return stack_layers([grads[l].sum(1) for l in layers])


def _path(adapter, pixels, clean, config, k, options) -> MethodOutput:
    """Per-layer top-k of the Influence Pattern scores: (images, layers, k)."""
    scores = influence_pattern_scores(adapter, pixels, clean, config)
    return MethodOutput(top_k(scores, k), scores=scores)


METHOD = PathMethod(
    "influence-pattern",
    "Influence Pattern path (App. C.3) as the official code computes it: "
    "per-layer argmax of the alpha-averaged total derivative",
    _path,
    title="Influence Pattern path",
)
