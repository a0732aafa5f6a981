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
from ..engine.neurons import gather_neurons, masks_for, stack_layers, top_k
from ..engine.units import ABSENT
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

    def scores_undefined(self, units: str) -> str | None:
        if units == "neurons+heads":
            return "a mixed path compares the best unit of two sites per block, not one ranking"
        if self.rerank not in (0, "all"):
            return f"--rerank {self.rerank} scores only the best {self.rerank} candidates exactly"
        return None


def layer_scores(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig,
    prefix: dict[int, torch.Tensor],
    layer: int,
    topk_mode: str = "all",
    baseline: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The official whole-layer candidate scores S_t (the module docstring) of every unit of
    ``layer`` given the path so far, ``prefix`` ({layer: (images, K)}; ``ABSENT`` entries of a
    mixed path leave their site unedited): (images, n).  A prefix holding units of the other
    kind (a mixed path) adds its own product of sums, (sum of its values) x (sum of its
    integrals), as the JAS of a mixed set does
    (:func:`~neuronpath.engine.attribution.set_scores`): the same for every candidate of the
    layer, it matters only when the sites of a block are compared.  ``baseline`` (per layer,
    (tokens, n)): the integral runs from it, u = b + alpha (h - b), and the values are h - b."""
    n_images, device, dtype = clean.labels.shape[0], adapter.device, adapter.dtype
    terms = clean.token_terms
    values = clean.acts if baseline is None else [a - b for a, b in zip(clean.acts, baseline)]
    masks = masks_for(prefix, clean.widths, dtype, device)
    masks[layer] = torch.ones(n_images, clean.widths[layer], dtype=dtype, device=device)
    active = {l: (i != ABSENT).any(1) for l, i in prefix.items() if (i == ABSENT).any()}
    starts = None if baseline is None else {l: baseline[l] for l in masks}
    grads = integrated_gradients(
        adapter, pixels, clean, masks, config, active=active or None, baseline=starts
    )
    summed = {l: i[:, -1:] if topk_mode == "official" else i for l, i in prefix.items()}
    kind = adapter.units(layer).kind
    zero = torch.zeros((), dtype=dtype, device=device)

    def sums(layers):
        value = sum((gather_neurons(terms(values[l]), summed[l]) for l in layers), zero)
        grad = sum((gather_neurons(terms(grads[l]), summed[l]) for l in layers), zero)
        return value, grad

    value_prefix, grad_prefix = sums([l for l in summed if adapter.units(l).kind == kind])
    other_value, other_grad = sums([l for l in summed if adapter.units(l).kind != kind])
    return (
        (terms(values[layer]) + value_prefix[..., None])
        * (terms(grads[layer]) + grad_prefix[..., None])
        + (other_value * other_grad)[..., None]
    ).sum(1)


def jas_path(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
    k: int = 1,
    topk_mode: str = "all",
    rerank: int | str = 0,
    with_scores: bool = False,
    baseline: list[torch.Tensor] | None = None,
):
    """Layer-progressive search (Alg. 1 / Alg. 3), official whole-layer candidate scoring, or
    with ``rerank`` C > 0 its best C candidates re-scored exactly (``"all"``: every neuron).

    Re-scoring: candidate w of layer t scores JAS(P ∪ {w}) with only w scaled in layer t
    (:func:`~neuronpath.engine.attribution.extension_scores`); the K best are kept, ties to
    the better official rank (``"all"``: to the lower index).  Returns the path, a LongTensor
    (images, layers, k), and with ``with_scores`` (official scoring or ``rerank="all"``) each
    layer's scores of every candidate given the path before it, (images, layers, widest
    layer).  On a mixed adapter (neurons and heads, two sites per block) the
    search is :func:`mixed_jas_path`.
    """
    rerank = JASOptions(topk_mode, rerank).rerank  # validates both
    if baseline is not None and (rerank or adapter.unit_set != "neurons"):
        raise InputError(
            "baseline: a baseline other than zero is defined for neuron paths with the "
            "official scoring (no rerank)"
        )
    if adapter.unit_set == "neurons+heads":
        if k != 1 or rerank:
            raise InputError(
                f"{option('units')}: a mixed path holds one unit per block; --topk and "
                f"--rerank are defined for neuron or head paths"
            )
        return mixed_jas_path(adapter, pixels, clean, config)
    n_images = clean.labels.shape[0]
    device = adapter.device
    widths = clean.widths
    if not 1 <= k <= min(widths):
        raise InputError(
            f"{option('topk')}: expected 1 <= K <= {min(widths)} (the FFN width), got {k}"
        )
    JASOptions(topk_mode, rerank).check(k)
    if with_scores and rerank not in (0, "all"):
        why = JASOptions(topk_mode, rerank).scores_undefined(adapter.unit_set)
        raise InputError(f"{option('rerank')}: no ranking of every candidate to return: {why}")
    path = torch.zeros(n_images, adapter.num_layers, k, dtype=torch.long, device=device)
    ranked = []
    for t in range(adapter.num_layers):
        if rerank == "all":
            candidates = torch.arange(widths[t], device=device).expand(n_images, -1)
        else:
            prefix = {l: path[:, l] for l in range(t)}
            scores = layer_scores(adapter, pixels, clean, config, prefix, t, topk_mode, baseline)
            if not rerank:
                path[:, t] = top_k(scores, k)
                ranked.append(scores)
                continue
            candidates = top_k(scores, min(rerank, widths[t]))
        prefix = {l: path[:, l] for l in range(t)}
        exact = extension_scores(
            adapter, pixels, clean, t, candidates, prefix, config, topk_mode == "official"
        )
        path[:, t] = candidates.gather(1, top_k(exact, k))
        ranked.append(exact)  # kept only for "all", where candidate i is unit i
    return (path, stack_layers(ranked)) if with_scores else path


def mixed_jas_path(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
    kinds: tuple[str, ...] = ("neuron", "head"),
) -> torch.Tensor:
    """The layer-progressive search over neurons and heads (``find --units neurons+heads``): at
    block t each of its sites (heads, neurons) is scored as a whole layer is in Alg. 1, given
    the same path so far (the site of the other kind runs normally), and the block keeps the
    single best unit of either kind; the site it did not choose holds ``ABSENT``.  Each score
    is the JAS of the path so far with the candidate, in the form of a mixed set (a product of
    sums per kind, :func:`layer_scores`), so the choice does not depend on the unit a head's
    value is read in; the larger wins, a tie goes to the neuron.  With ``kinds=("neuron",)``
    this is :func:`jas_path` exactly.  Returns (images, sites, 1)."""
    n_images, device = clean.labels.shape[0], adapter.device
    path = torch.full((n_images, adapter.num_layers, 1), ABSENT, dtype=torch.long, device=device)
    order = sorted(kinds, key=lambda kind: kind != "neuron")  # neurons first: they win ties
    for block in sorted(set(adapter.blocks)):
        sites = [l for l in range(adapter.num_layers) if adapter.blocks[l] == block]
        prefix = {l: path[:, l] for l in range(min(sites))}
        best = torch.full((n_images,), -torch.inf, dtype=adapter.dtype, device=device)
        choice = torch.zeros(n_images, dtype=torch.long, device=device)
        unit = torch.zeros(n_images, dtype=torch.long, device=device)
        for kind in order:
            for site in (l for l in sites if adapter.units(l).kind == kind):
                scores = layer_scores(adapter, pixels, clean, config, prefix, site)
                value, index = scores.max(-1)  # first index on ties
                better = value > best
                best = torch.where(better, value, best)
                choice = torch.where(better, site, choice)
                unit = torch.where(better, index, unit)
        for site in sites:
            path[:, site, 0] = torch.where(choice == site, unit, ABSENT)
    return path


def jas_output(adapter, pixels, clean, config, k, options, baseline=None) -> MethodOutput:
    """The JAS search's path, with its scores where ``options`` rank every candidate."""
    if options.scores_undefined(adapter.unit_set) is not None:
        path = jas_path(
            adapter, pixels, clean, config, k, options.topk_mode, options.rerank, baseline=baseline
        )
        return MethodOutput(path)
    path, scores = jas_path(
        adapter, pixels, clean, config, k, options.topk_mode, options.rerank, True, baseline
    )
    return MethodOutput(path, scores=scores)


METHOD = PathMethod(
    "jas",
    "JAS path: layer-progressive search maximising the Joint Attribution Score "
    "(Alg. 1; TopK: Alg. 3)",
    jas_output,
    options=JASOptions,
    title="JAS path",
    units=("neurons", "heads", "neurons+heads", "sae"),
)
