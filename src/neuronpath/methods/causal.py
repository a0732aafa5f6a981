"""Causal search: a path chosen by what ablating it does to the output, not by an attribution.

Layer by layer, the best C candidates of a prior ranking (``knowledge``: per-neuron integrated
gradients, App. B; ``activation``; ``jas``: the official whole-layer scores of Alg. 1 given the
path so far) are each tried with the path so far, P_t(c) = {p_0, ..., p_{t-1}, c}, under the
chosen ablation (an ablated unit takes zero, or its mean over ``find --reference``'s images, at
the read positions):

    removed(c) = F(x; the units of P_t(c) ablated)
    kept(c)    = F(x; every other unit of layers 0..t ablated, the units of P_t(c) kept)

with F the run's objective on its target (softmax probability by default, as Eq. 3), and scored
``kept(c) - removed(c)`` (``both``: the path should be sufficient *and* necessary),
``-removed(c)`` (``necessity``) or ``kept(c)`` (``sufficiency``).  p_t is the best candidate
(ties to the prior's order); with K > 1 the K best.  Layers after t run normally while layer t is
chosen.  Cost: the prior's (none for ``activation``; the knowledge prior is the knowledge
path's own attribution, computed once per batch when both run) plus, per image and layer, 2C
forwards (C for a one-sided score), no backward pass.

Its ranking of a layer (``find --save-scores``): the C candidates in causal order, then every
other unit in the prior's order; the scores saved are minus each unit's place in that ranking
(the top unit scores -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.ablation import SELECTABLE, SIDES, STATISTICS, path_edit, selection_criterion
from ..engine.attribution import objective
from ..engine.editing import edited_chunks
from ..engine.interventions import ablate_neurons
from ..engine.neurons import stack_layers, top_k
from ..errors import InputError, option
from .activation import activation_scores
from .base import (
    MethodOptions,
    MethodOutput,
    PathMethod,
    ablated_values,
    ablation_field,
    check_fields,
)
from .jas import layer_scores
from .knowledge import knowledge_attribution

PRIORS = ("knowledge", "activation", "jas")


@dataclass(frozen=True)
class CausalOptions(MethodOptions):
    """Options of the causal search (see the module docstring)."""

    causal_candidates: int = field(
        default=8,
        metadata={"type": int, "help": "candidates C tried per layer (the prior's best C)"},
    )
    causal_prior: str = field(
        default="knowledge",
        metadata={
            "choices": PRIORS,
            "help": "what ranks the candidates: knowledge (per-neuron integrated gradients), "
            "activation, or jas (Alg. 1's whole-layer scores given the path so far)",
        },
    )
    causal_ablation: str = ablation_field()
    causal_score: str = field(
        default="both",
        metadata={
            "choices": STATISTICS,
            "help": "both: F(only the path kept) - F(path ablated); necessity: -F(path ablated); "
            "sufficiency: F(only the path kept)",
        },
    )

    def __post_init__(self):
        choices = {
            "causal_prior": PRIORS,
            "causal_ablation": SELECTABLE,
            "causal_score": STATISTICS,
        }
        check_fields(self, choices, counts=["causal_candidates"])

    def check(self, k: int) -> None:
        if self.causal_candidates < k:
            raise InputError(
                f"{option('causal_candidates')}: expected at least K = {k} candidates, got "
                f"{self.causal_candidates}"
            )

    @property
    def needs_reference(self) -> bool:
        return self.causal_ablation == "mean"

    def selection(self, objective: str, reference: str | None) -> dict:
        return selection_criterion(self.causal_ablation, self.causal_score, objective, reference)


def candidate_outputs(adapter, pixels, clean, config, sources, path, layer, candidates, sides):
    """F of every (image, candidate, side) row: ``sides`` among ``("removed", "kept")`` (the
    module docstring), the path so far ``path[:, :layer]`` (images, layers, K) with each
    candidate (images, C) at ``layer``.  Returns {side: (images, C)}."""
    n_images, count = candidates.shape
    device, dtype = adapter.device, adapter.dtype
    rows = n_images * count * len(sides)
    image = torch.arange(n_images, device=device).repeat_interleave(count * len(sides))
    keep = torch.tensor([s == "kept" for s in sides], device=device).repeat(n_images * count)
    multipliers = {}
    for l in range(layer + 1):
        on = torch.zeros(rows, clean.widths[l], dtype=torch.bool, device=device)
        if l < layer:
            units = path[:, l].repeat_interleave(count * len(sides), 0)
        else:
            units = candidates.reshape(-1, 1).repeat_interleave(len(sides), 0)
        on.scatter_(1, units, True)
        multipliers[l] = path_edit(on.to(dtype), keep)
    which = torch.zeros(rows, dtype=torch.long, device=device)

    def edit(chunk: slice):
        return ablate_neurons(
            adapter,
            {
                l: (m[chunk], a[chunk], sources[l], which[chunk])
                for l, (m, a) in multipliers.items()
            },
        )

    values = torch.cat(
        [
            objective(logits, clean.targets[image[chunk]], config.objective)
            for chunk, logits in edited_chunks(adapter, pixels, image, edit)
        ]
    ).to(dtype)
    values = values.reshape(n_images, count, len(sides))
    return {side: values[..., i] for i, side in enumerate(sides)}


def causal_path(adapter, pixels, clean, config, k: int = 1, options=CausalOptions()):
    """The causal search (module docstring): the path (images, layers, k) and each layer's
    ranking as scores (images, layers, widest layer)."""
    if adapter.unit_set not in ("neurons", "sae"):
        raise InputError(
            f"{option('units')}: the causal search is defined for paths of neurons or SAE latents, "
            f"got {adapter.unit_set}"
        )
    options.check(k)
    pixels = pixels.to(adapter.device, adapter.dtype)
    n_images, device = clean.labels.shape[0], adapter.device
    sources = ablated_values(adapter, clean, options.causal_ablation, "causal_ablation")
    sides = SIDES[options.causal_score]
    prior = None
    if options.causal_prior == "knowledge":
        prior = knowledge_attribution(adapter, pixels, clean, config)
    elif options.causal_prior == "activation":
        prior = activation_scores(clean)
    path = torch.zeros(n_images, adapter.num_layers, k, dtype=torch.long, device=device)
    ranked = []
    for t in range(adapter.num_layers):
        width = clean.widths[t]
        if prior is None:
            prefix = {l: path[:, l] for l in range(t)}
            scores = layer_scores(adapter, pixels, clean, config, prefix, t)
        else:
            scores = prior[:, t, :width]
        order = top_k(scores, width)  # the prior's ranking, first index on ties
        candidates = order[:, : min(options.causal_candidates, width)]
        out = candidate_outputs(adapter, pixels, clean, config, sources, path, t, candidates, sides)
        causal = out.get("kept", 0) - out.get("removed", 0)
        best = top_k(causal, candidates.shape[1])  # ties: the prior's order
        path[:, t] = candidates.gather(1, best[:, :k])
        ranking = torch.cat([candidates.gather(1, best), order[:, candidates.shape[1] :]], 1)
        place = torch.empty_like(ranking)
        place.scatter_(1, ranking, torch.arange(width, device=device).expand(n_images, -1))
        ranked.append(-(place + 1).to(adapter.dtype))
    return path, stack_layers(ranked)


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    path, scores = causal_path(adapter, pixels, clean, config, k, options)
    return MethodOutput(path, scores=scores)


METHOD = PathMethod(
    "causal",
    "causal search: per layer, the prior's best C candidates re-scored by the measured "
    "output with the path so far kept alone and ablated (zero or reference mean)",
    _method,
    options=CausalOptions,
    title="causal path",
    units=("neurons", "sae"),
    undefined="its candidates are ablated as neurons",
)
