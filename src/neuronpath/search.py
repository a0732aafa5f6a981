"""Neuron paths: the layer-progressive JAS search (Alg. 1), its TopK variant (Alg. 3), and
``find_paths``, which runs any set of path methods on a batch of images.

``jas_path`` follows the authors' code (spec §2): at layer t the earlier path neurons scale
with alpha (the rest of their layers frozen at clean values), the *whole* layer t scales with
alpha, later layers run normally, and candidate i scores

    S_t[i] = (h_t[i] + sum_{l<t} h_l[p_l]) * sum_k w_k (g_t[i] + sum_{l<t} g_l[p_l])|_{alpha_k}

(per token, summed over tokens); p_t = argmax_i S_t[i] (signed, first index on ties).
With K > 1 the K best candidates are kept per layer (App. E.1); by default all K of every
earlier layer enter both sums, ``topk_mode='official'`` lets only the K-th enter (spec §8,
a reproduction of the released code's bug).  Each layer costs one forward and one backward
over images x steps rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .adapters import ModelAdapter
from .attribution import (AttributionConfig, CleanPass, _gather, clean_pass,
                          integrated_gradients, joint_attribution_scores, masks_for, top_k)
from .influence import influence_pattern_path
from .knowledge import knowledge_attribution, top_neurons

METHODS = ("jas", "activation", "influence-pattern", "knowledge")
DEFAULT_METHODS = ("jas", "activation")
TOPK_MODES = ("all", "official")


def activation_path(clean: CleanPass, k: int = 1) -> torch.Tensor:
    """Max-activation path (App. C.2): the top-k signed clean activations per layer (summed
    over tokens for multi-token policies).  Returns (images, layers, k)."""
    return torch.stack([top_k(a.sum(1), k) for a in clean.acts], dim=1)


def jas_path(adapter: ModelAdapter, pixels: torch.Tensor, clean: CleanPass,
             config: AttributionConfig = AttributionConfig(), k: int = 1,
             topk_mode: str = "all") -> torch.Tensor:
    """Layer-progressive search (Alg. 1 / Alg. 3 with official whole-layer candidate scoring).

    Returns the path, a LongTensor (images, layers, k).
    """
    if topk_mode not in TOPK_MODES:
        raise ValueError(f"topk mode: expected one of {TOPK_MODES}, got {topk_mode!r}")
    n_images = clean.labels.shape[0]
    device, dtype = adapter.device, adapter.dtype
    width = clean.acts[0].shape[-1]
    if not 1 <= k <= width:
        raise ValueError(f"topk: expected 1 <= K <= {width} (the FFN width), got {k}")
    path = torch.zeros(n_images, adapter.num_layers, k, dtype=torch.long, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    for t in range(adapter.num_layers):
        masks = masks_for({l: path[:, l] for l in range(t)}, width, dtype, device)
        masks[t] = torch.ones(n_images, width, dtype=dtype, device=device)
        grads = integrated_gradients(adapter, pixels, clean, masks, config)
        summed = {l: path[:, l, -1:] if topk_mode == "official" else path[:, l]
                  for l in range(t)}
        value_prefix = sum((_gather(clean.acts[l], i) for l, i in summed.items()), zero)
        grad_prefix = sum((_gather(grads[l], i) for l, i in summed.items()), zero)
        scores = ((clean.acts[t] + value_prefix[..., None])
                  * (grads[t] + grad_prefix[..., None])).sum(1)
        path[:, t] = top_k(scores, k)
    return path


def path_to_set(path: torch.Tensor) -> dict[int, torch.Tensor]:
    """(images, layers, k) path -> neuron set {layer: (images, k) indices}."""
    return {l: path[:, l] for l in range(path.shape[1])}


@dataclass
class PathResult:
    """Paths and their final JAS for a batch of images, plus the clean pass."""

    clean: CleanPass
    paths: dict[str, torch.Tensor]  # method -> (images, layers) for K = 1, else (images, layers, K)
    scores: dict[str, torch.Tensor]  # method -> (images,) final JAS
    extras: dict[str, dict] = field(default_factory=dict)  # method -> extra per-image outputs


def find_paths(adapter: ModelAdapter, pixels: torch.Tensor, labels,
               methods: Sequence[str] = DEFAULT_METHODS,
               config: AttributionConfig = AttributionConfig(), k: int = 1,
               topk_mode: str = "all") -> PathResult:
    """Find each method's path for a batch of images and its final JAS (spec §2, "Final JAS").

    Methods: ``jas`` (Alg. 1), ``activation`` (App. C.2), ``influence-pattern`` (App. C.3 as
    the official code computes it), ``knowledge`` (per-layer top-k of the knowledge-neuron
    attribution, App. B; its top-5 (layer, neuron) pairs go to ``extras``).  One clean forward
    is shared by every method; the final JAS of all paths comes from one batched pass.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {METHODS}")
    clean = clean_pass(adapter, pixels, labels, config)
    paths, extras = {}, {}
    for method in methods:
        if method == "jas":
            paths[method] = jas_path(adapter, pixels, clean, config, k, topk_mode)
        elif method == "activation":
            paths[method] = activation_path(clean, k)
        elif method == "influence-pattern":
            paths[method] = influence_pattern_path(adapter, pixels, clean, config, k)
        else:
            attribution = knowledge_attribution(adapter, pixels, clean, config)
            paths[method] = top_k(attribution, k)
            extras[method] = {"top": top_neurons(attribution, 5)}
    finals = joint_attribution_scores(adapter, pixels, clean,
                                      [path_to_set(paths[m]) for m in methods], config,
                                      last_only=topk_mode == "official")
    if k == 1:
        paths = {m: p[..., 0] for m, p in paths.items()}
    return PathResult(clean, paths, dict(zip(methods, finals)), extras)
