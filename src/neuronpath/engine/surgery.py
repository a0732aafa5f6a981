"""The whole surgery of ``neuronpath plant``, in place on a model: the chain
(:mod:`.chain`), the distractor families beside it and the ambiguous register
(:mod:`.distractors`).  Returns what ``planted.json`` records of them."""

from __future__ import annotations

import torch

from ..draws import seeded_generator
from .chain import Calibration, ChainBuilder, build_chain, read_mask, record, spare_units, usage
from .distractors import FAMILIES, plant_distractors, plant_register


def plant_model(
    adapter, calibration: Calibration, layers, target: int, share: float, seed: int, batch: int
) -> dict:
    """Plant the chain in ``layers`` (its units at ``share`` of their layers' typical largest
    deviation), every distractor family in every planted layer and the register in the middle
    one, each on a spare unit drawn (``seed``) among its layer's least-used tenth."""
    generator = seeded_generator("plant-units", seed)
    every = [layers[0] - 1, *layers]
    clean = record(adapter, calibration.clean, batch, layers=every)[0]
    tokens = clean[every[0]].shape[1]
    read = {l: read_mask(adapter, l, tokens) for l in every}
    count = 2 + len(FAMILIES)
    spare = {l: spare_units(usage(adapter, clean[l], l), count, generator) for l in every}
    chain = build_chain(adapter, calibration, layers, target, share, spare, batch, generator)
    builder = ChainBuilder(adapter, calibration, batch, generator)
    distractors = plant_distractors(builder, layers, spare, read, chain)
    middle = layers[len(layers) // 2]
    distractors.append(plant_register(builder, middle, spare[middle][-1], read[middle]))
    return {**chain, "distractors": distractors}


def natural_maxima_of(adapter, pixels: torch.Tensor, layers, batch: int) -> dict:
    """Per layer, each image's largest unit activation at the read tokens (images,)."""
    units = record(adapter, pixels, batch, layers=layers)[0]
    tokens = next(iter(units.values())).shape[1]
    return {l: units[l][:, read_mask(adapter, l, tokens)].amax((1, 2)) for l in layers}
