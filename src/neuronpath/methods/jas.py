"""The JAS path: layer-progressive search (Alg. 1) and its TopK variant (Alg. 3).

``jas_path`` follows the authors' code (docs/official-code.md#jas-search): at layer t the earlier
path neurons scale with alpha (the rest of their layers frozen at clean values), the *whole* layer t
scales with alpha, later layers run normally, and candidate i scores

    S_t[i] = (h_t[i] + sum_{l<t} h_l[p_l]) * sum_k w_k (g_t[i] + sum_{l<t} g_l[p_l])|_{alpha_k}

(per token, summed over tokens; in hierarchical models each layer's terms are first summed over its
own tokens); p_t = argmax_i S_t[i] (signed, first index on ties). With K > 1 the K best candidates
are kept per layer (App. E.1); by default all K of every earlier layer enter both sums,
``topk_mode='official'`` lets only the K-th enter (docs/official-code.md#topk-and-pruning, a
reproduction of the released code's bug).  Each layer costs one forward and one backward over images
x steps rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import (
    AttributionConfig,
    CleanPass,
    extension_scores,
    integrated_gradients,
)
from ..engine.neurons import gather_neurons, masks_for, top_k
from ..errors import InputError, option
from .base import MethodOptions, MethodOutput, PathMethod

TOPK_MODES = ("all", "official")


def parse_rerank(value: int | str) -> int | str:
    """0, a positive number of candidates, or 'all'."""
    if value == "all":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or (isinstance(value, float) and value != count):
        raise InputError(
            f"{option('rerank')}: expected 0, a number of candidates or 'all', got {value!r}"
        )
    return count


@dataclass(frozen=True)
class JASOptions(MethodOptions):
    """Options of the JAS search (see the module docstring)."""

    topk_mode: str = field(
        default="all",
        metadata={
            "choices": TOPK_MODES,
            "help": "with --topk K > 1, all: every earlier chosen neuron enters the score "
            "(Alg. 3); "
            "official: only the K-th does, in the search and in the final JAS of every path "
            "of the run (the released code's bug, docs/official-code.md#topk-and-pruning)",
        },
    )
    rerank: int | str = field(
        default=0,
        metadata={
            "help": "re-score the search's best C candidates exactly, JAS(P + {w}) (Alg. 1 as "
            "written); 'all' scores every neuron; 0 (default) keeps the official "
            "whole-layer scoring"
        },
    )

    def __post_init__(self):
        if self.topk_mode not in TOPK_MODES:
            raise InputError(
                f"{option('topk_mode')}: expected one of {TOPK_MODES}, got {self.topk_mode!r}"
            )
        object.__setattr__(self, "rerank", parse_rerank(self.rerank))

    def check(self, k: int) -> None:
        if self.rerank != "all" and 0 < self.rerank < k:
            raise InputError(
                f"{option('rerank')}: expected at least K = {k} candidates, got {self.rerank}"
            )

    @property
    def final_terms_last_only(self) -> bool:
        return self.topk_mode == "official"


def jas_path(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
    k: int = 1,
    topk_mode: str = "all",
    rerank: int | str = 0,
) -> torch.Tensor:
    """Layer-progressive search (Alg. 1 / Alg. 3), official whole-layer candidate scoring, or
    with ``rerank`` C > 0 its best C candidates re-scored exactly (``"all"``: every neuron).

    Re-scoring: candidate w of layer t scores JAS(P ∪ {w}) with only w scaled in layer t
    (:func:`~neuronpath.engine.attribution.extension_scores`); the K best are kept, ties to
    the better official rank (``"all"``: to the lower index).  Returns the path, a LongTensor
    (images, layers, k).
    """
    rerank = JASOptions(topk_mode, rerank).rerank  # validates both
    n_images = clean.labels.shape[0]
    device, dtype = adapter.device, adapter.dtype
    widths = clean.widths
    if not 1 <= k <= min(widths):
        raise InputError(
            f"{option('topk')}: expected 1 <= K <= {min(widths)} (the FFN width), got {k}"
        )
    JASOptions(topk_mode, rerank).check(k)
    path = torch.zeros(n_images, adapter.num_layers, k, dtype=torch.long, device=device)
    zero = torch.zeros((), dtype=dtype, device=device)
    terms = clean.token_terms
    for t in range(adapter.num_layers):
        if rerank == "all":
            candidates = torch.arange(widths[t], device=device).expand(n_images, -1)
        else:
            masks = masks_for({l: path[:, l] for l in range(t)}, widths, dtype, device)
            masks[t] = torch.ones(n_images, widths[t], dtype=dtype, device=device)
            grads = integrated_gradients(adapter, pixels, clean, masks, config)
            summed = {
                l: path[:, l, -1:] if topk_mode == "official" else path[:, l] for l in range(t)
            }
            value_prefix = sum(
                (gather_neurons(terms(clean.acts[l]), i) for l, i in summed.items()), zero
            )
            grad_prefix = sum((gather_neurons(terms(grads[l]), i) for l, i in summed.items()), zero)
            scores = (
                (terms(clean.acts[t]) + value_prefix[..., None])
                * (terms(grads[t]) + grad_prefix[..., None])
            ).sum(1)
            if not rerank:
                path[:, t] = top_k(scores, k)
                continue
            candidates = top_k(scores, min(rerank, widths[t]))
        prefix = {l: path[:, l] for l in range(t)}
        exact = extension_scores(
            adapter, pixels, clean, t, candidates, prefix, config, topk_mode == "official"
        )
        path[:, t] = candidates.gather(1, top_k(exact, k))
    return path


METHOD = PathMethod(
    "jas",
    "JAS path: layer-progressive search maximising the Joint Attribution Score "
    "(Alg. 1; TopK: Alg. 3)",
    lambda adapter, pixels, clean, config, k, options: MethodOutput(
        jas_path(adapter, pixels, clean, config, k, options.topk_mode, options.rerank)
    ),
    options=JASOptions,
    title="JAS path",
)
