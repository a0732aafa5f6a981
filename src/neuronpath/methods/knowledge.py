"""Knowledge-neuron attribution (§3.1, App. B, Eq. 5-6): the integrated gradient of every FFN
neuron of every layer.

The authors' repository has no code for it (docs/official-code.md#knowledge-attribution); neuronpath
follows Dai et al.'s convention, which the repository's leftovers point to: for each layer l
separately, the
**whole layer's** neuron vector is scaled, u_l = alpha h_l (other layers run normally), and

    Attr_l[i] = h_l[i] * sum_k w_k dF/du_l[i] |_{alpha_k}

with the run's alpha grid (default: left, alpha_k = k/m, k = 0..m-1, m = 20; the paper's Eq. 6
is the ``right`` grid).  Cost: L forward+backward passes over images x steps rows.
Summed over tokens for multi-token policies.
"""

from __future__ import annotations

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass, integrated_gradients
from ..engine.neurons import stack_layers, top_k
from .base import MethodOutput, PathMethod


def knowledge_attribution(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
) -> torch.Tensor:
    """Per-neuron integrated gradients of every layer: (images, layers, n) (layers narrower
    than the widest score -inf beyond their width).  Computed once per clean pass and
    configuration: a second method asking for it (the causal search's prior) reuses it."""
    key = ("knowledge_attribution", config)
    if key in clean.shared:
        return clean.shared[key]
    n_images = clean.labels.shape[0]
    out = []
    for l in range(adapter.num_layers):
        ones = torch.ones(n_images, clean.widths[l], dtype=adapter.dtype, device=adapter.device)
        grads = integrated_gradients(adapter, pixels, clean, {l: ones}, config)[l]
        out.append((clean.acts[l] * grads).sum(1))
    clean.shared[key] = stack_layers(out)
    return clean.shared[key]


def top_neurons(attribution: torch.Tensor, k: int = 5) -> list[list[tuple[int, int, float]]]:
    """The k (layer, neuron, score) triples with the largest attribution, per image."""
    n_images, _, width = attribution.shape
    flat = attribution.reshape(n_images, -1)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
    return [
        [(int(j) // width, int(j) % width, float(flat[b, j])) for j in order[b]]
        for b in range(n_images)
    ]


def _knowledge(adapter, pixels, clean, config, k, options) -> MethodOutput:
    attribution = knowledge_attribution(adapter, pixels, clean, config)
    return MethodOutput(
        top_k(attribution, k), {"top": top_neurons(attribution, 5)}, scores=attribution
    )


METHOD = PathMethod(
    "knowledge",
    "knowledge-neuron path (App. B): per-layer argmax of per-neuron integrated "
    "gradients; records also hold the image's top-5 (layer, neuron, score)",
    _knowledge,
    title="knowledge path",
    top_neurons="top-5 knowledge neurons",
)
