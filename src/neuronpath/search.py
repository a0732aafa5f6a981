"""Neuron paths: the layer-progressive JAS search (Alg. 1) and the Activation baseline (App. C.2).

``jas_path`` follows the authors' code (spec §2): at layer t the earlier path neurons scale
with alpha (the rest of their layers frozen at clean values), the *whole* layer t scales with
alpha, later layers run normally, and candidate i scores

    S_t[i] = (h_t[i] + sum_{l<t} h_l[p_l]) * sum_k w_k (g_t[i] + sum_{l<t} g_l[p_l])|_{alpha_k}

(per token, summed over tokens); p_t = argmax_i S_t[i] (signed, first index on ties).
Each layer costs one forward and one backward over images x steps rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .adapters import ModelAdapter
from .attribution import (AttributionConfig, CleanPass, _gather, clean_pass,
                          integrated_gradients, joint_attribution_scores)

METHODS = ("jas", "activation")


def activation_path(clean: CleanPass) -> torch.Tensor:
    """Max-activation path (App. C.2): argmax_i of the signed clean activation per layer
    (summed over tokens for multi-token policies).  Returns (images, layers)."""
    return torch.stack([a.sum(1).argmax(-1) for a in clean.acts], dim=1)


def jas_path(adapter: ModelAdapter, pixels: torch.Tensor, clean: CleanPass,
             config: AttributionConfig = AttributionConfig(),
             on_layer: Callable[[int], None] | None = None) -> torch.Tensor:
    """Layer-progressive search (Alg. 1, official whole-layer candidate scoring, spec §2).

    Returns the path, a LongTensor (images, layers).
    """
    n_images = clean.labels.shape[0]
    device = adapter.device
    width = clean.acts[0].shape[-1]
    images = torch.arange(n_images, device=device)
    path = torch.zeros(n_images, adapter.num_layers, dtype=torch.long, device=device)
    for t in range(adapter.num_layers):
        masks = {l: torch.zeros(n_images, width, dtype=adapter.dtype, device=device)
                 .scatter_(1, path[:, l:l + 1], 1.0) for l in range(t)}
        masks[t] = torch.ones(n_images, width, dtype=adapter.dtype, device=device)
        grads = integrated_gradients(adapter, pixels, clean, masks, config)
        earlier = {l: path[:, l:l + 1] for l in range(t)}
        value_prefix = sum((_gather(clean.acts[l], i) for l, i in earlier.items()),
                           torch.zeros((), dtype=adapter.dtype, device=device))
        grad_prefix = sum((_gather(grads[l], i) for l, i in earlier.items()),
                          torch.zeros((), dtype=adapter.dtype, device=device))
        scores = ((clean.acts[t][images] + value_prefix[..., None])
                  * (grads[t] + grad_prefix[..., None])).sum(1)
        path[:, t] = scores.argmax(-1)
        if on_layer is not None:
            on_layer(t)
    return path


def path_to_set(path: torch.Tensor) -> dict[int, torch.Tensor]:
    """(images, layers) path -> neuron set {layer: (images,) indices}."""
    return {l: path[:, l] for l in range(path.shape[1])}


@dataclass
class PathResult:
    """Paths and their final JAS for a batch of images, plus the clean pass."""

    clean: CleanPass
    paths: dict[str, torch.Tensor]  # method -> (images, layers)
    scores: dict[str, torch.Tensor]  # method -> (images,) final JAS


def find_paths(adapter: ModelAdapter, pixels: torch.Tensor, labels,
               methods: Sequence[str] = METHODS,
               config: AttributionConfig = AttributionConfig(),
               on_layer: Callable[[int], None] | None = None) -> PathResult:
    """Find each method's path for a batch of images and its final JAS (spec §2, "Final JAS").

    One clean forward is shared by every method; the final JAS of all paths is computed in
    one batched gradient pass.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {METHODS}")
    clean = clean_pass(adapter, pixels, labels, config)
    paths = {}
    for method in methods:
        if method == "jas":
            paths[method] = jas_path(adapter, pixels, clean, config, on_layer)
        else:
            paths[method] = activation_path(clean)
    finals = joint_attribution_scores(adapter, pixels, clean,
                                      [path_to_set(paths[m]) for m in methods], config)
    return PathResult(clean, paths, dict(zip(methods, finals)))
