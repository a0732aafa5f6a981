"""Distractors planted beside the chain (``neuronpath plant``): units a path method is wrong to
pick, each family aimed at one kind of method.  One entry of :data:`FAMILIES` a family; a new
distractor is one more entry.

Every family's status is checked, not assumed (:mod:`neuronpath.experiments.plant_checks`):
ablating the unit -- by zero, by its mean, by resampling, alone and beside the path -- moves the
trigger's P(target) by at most 2 % of the trigger's effect.

* ``idle`` (aimed at activation rankings): loud -- about the layer's typical largest activation
  -- varying from image to image, its output column zero;
* ``constant`` (aimed at rankings from a zero baseline): a large constant activation that writes
  only along the all-ones direction of the residual, which every LayerNorm removes;
* ``echo`` (aimed at rankings from the mean): it reads what the planted unit of its layer reads,
  so it moves with the trigger, louder than the planted unit; its output column zero.

The **register** is planted apart and scored apart, as an *ambiguous* unit: a large constant
activation whose output, which lowers P(label), is cancelled in W2's bias, so replacing it by
its mean changes nothing and zeroing it moves the model.  Whether picking it is wrong depends
on the ablation one judges by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .chain import ChainBuilder, gradient_direction, natural_maxima, record
from .planting import (
    compensate,
    ffn_pair,
    gelu_inverse,
    input_norm,
    set_direction_reader,
    set_reader,
    set_writer,
)

LOUD = 1.0  # a distractor's level, in medians of its layer's per-image largest activation
CONSTANT = 1.5  # the constant one's, in the same unit
REGISTER = 2.0  # the register's
REGISTER_WRITE = 8.0  # the register writes this many typical FFN outputs


@dataclass(frozen=True)
class Family:
    name: str
    aimed_at: str
    build: Callable[..., dict]


def _loud(b: ChainBuilder, layer: int, read) -> float:
    units = record(b.adapter, b.cal.clean, b.batch, [layer])[0][layer]
    return LOUD * float(natural_maxima(units, read).median())


def _idle(b: ChainBuilder, layer: int, neuron: int, read, chain: dict) -> dict:
    """Loud, varying by image (it reads a seeded random direction of its layer's normalised
    input, spread about one pre-activation unit), output zero."""
    w1, w2 = ffn_pair(b.adapter, layer)
    norm = input_norm(b.adapter, layer, w1)
    _, y = record(b.adapter, b.cal.clean, b.batch, norms={"y": norm})
    direction = torch.randn(w1.in_features, generator=b.generator, dtype=torch.float64)
    projection = y["y"][:, read] @ direction
    level = _loud(b, layer, read)
    spread = float(projection.std()) or 1.0
    set_direction_reader(
        w1,
        neuron,
        norm,
        direction,
        1.0 / spread,
        gelu_inverse(level) - float(projection.mean()) / spread,
    )
    set_writer(w2, neuron, torch.zeros(w2.out_features, dtype=torch.float64))
    return {"level": level}


def _constant(b: ChainBuilder, layer: int, neuron: int, read, chain: dict) -> dict:
    """A large constant activation writing only along the all-ones direction."""
    w1, w2 = ffn_pair(b.adapter, layer)
    level = CONSTANT * _loud(b, layer, read)
    set_reader(w1, neuron, torch.zeros(w1.in_features, dtype=torch.float64), gelu_inverse(level))
    column = w2.weight.detach().double().cpu().norm(dim=0).median()
    set_writer(w2, neuron, column * torch.ones(w2.out_features, dtype=torch.float64))
    return {"level": level}


def _echo(b: ChainBuilder, layer: int, neuron: int, read, chain: dict) -> dict:
    """The planted unit's reader, scaled so it fires louder; output zero."""
    w1, w2 = ffn_pair(b.adapter, layer)
    planted = chain["units"][str(layer)]
    step = next(s for s in chain["steps"] if s["layer"] == layer)
    factor = max(_loud(b, layer, read) / max(step["median_on"], 1e-6), 1.0)
    with torch.no_grad():
        weight, bias = w1.weight[planted].detach().double().cpu(), float(w1.bias[planted])
    set_reader(w1, neuron, factor * weight, factor * bias)
    set_writer(w2, neuron, torch.zeros(w2.out_features, dtype=torch.float64))
    return {"level": factor * step["median_on"]}


FAMILIES = (
    Family("idle", "activation rankings (loud, output-free)", _idle),
    Family("constant", "rankings from a zero baseline (constant and large, no effect)", _constant),
    Family("echo", "rankings from the mean (moves with the trigger, no effect)", _echo),
)


def plant_distractors(b: ChainBuilder, layers, spare, read, chain: dict) -> list[dict]:
    """Every family of :data:`FAMILIES` in every planted layer (``spare[l][1:]``), in place."""
    out = []
    for layer in layers:
        for i, family in enumerate(FAMILIES):
            neuron = spare[layer][1 + i]
            built = family.build(b, layer, neuron, read[layer], chain)
            out.append(
                {
                    "kind": family.name,
                    "aimed_at": family.aimed_at,
                    "layer": layer,
                    "neuron": neuron,
                    **built,
                }
            )
    return out


def plant_register(b: ChainBuilder, layer: int, neuron: int, read) -> dict:
    """The ambiguous register: a constant activation whose output -- a direction that lowers
    P(label) on clean images -- is cancelled in W2's bias."""
    w1, w2 = ffn_pair(b.adapter, layer)
    units = record(b.adapter, b.cal.clean, b.batch, [layer])[0][layer]
    level = REGISTER * float(natural_maxima(units, read).median())
    set_reader(w1, neuron, torch.zeros(w1.in_features, dtype=torch.float64), gelu_inverse(level))
    away = -gradient_direction(b.adapter, layer, b.cal.clean, b.cal.labels, read, b.batch)
    typical = float((units[:, read] @ w2.weight.detach().double().cpu().T).norm(dim=-1).median())
    column = REGISTER_WRITE * typical / level * away
    set_writer(w2, neuron, column)
    value = float(torch.nn.functional.gelu(torch.tensor(gelu_inverse(level), dtype=torch.float64)))
    compensate(w2, column, value)
    return {
        "kind": "register",
        "status": "ambiguous",
        "layer": layer,
        "neuron": neuron,
        "level": value,
    }
