"""Neuron sets and the index helpers every path method shares.

A *neuron set* is ``{layer: indices}``: an int or list of ints (the same neurons for every
image), or a tensor of shape (items,) or (items, K) (one set per item).  A *path* is a
LongTensor (images, layers, K), K neurons per layer.  "Neuron" stands for any unit of a site
(:mod:`neuronpath.engine.units`); in a mixed path an item may have no unit at a site
(``ABSENT``), where that site then runs unedited.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import InputError
from .units import ABSENT, gather_units, unit_mask

NeuronSet = Mapping[int, "torch.Tensor | Sequence[int] | int"]


def layer_width(widths: int | Sequence[int], layer: int) -> int:
    """The FFN width of ``layer``: one width for all layers, or one per layer."""
    return widths if isinstance(widths, int) else int(widths[layer])


def neuron_index(
    neurons: NeuronSet,
    n_items: int,
    device,
    width: int | Sequence[int],
    num_layers: int,
    absent: bool = False,
) -> dict[int, torch.Tensor]:
    """Normalise ``{layer: indices}`` to ``{layer: LongTensor (items, K)}``.

    An int or a list/tuple of ints is the same neuron set for every item; a tensor of shape
    (items,) or (items, K) gives one set per item.  Duplicates within a layer are rejected.
    ``width`` is the FFN width of every layer, or a list of per-layer widths.  With
    ``absent``, an item's index may be ``ABSENT`` (no unit at that site; mixed paths).
    """
    result = {}
    for layer, index in neurons.items():
        if isinstance(index, (int, list, tuple)):
            index = torch.as_tensor(index, device=device).long().reshape(1, -1)
            index = index.expand(n_items, -1)
        else:
            index = torch.as_tensor(index, device=device).long()
            index = index[:, None] if index.dim() == 1 else index
        if index.dim() != 2 or index.shape[0] != n_items or index.shape[1] == 0:
            raise InputError(
                f"neurons[{layer}]: expected an int, a list of ints, or a tensor of "
                f"shape ({n_items},) or ({n_items}, K); got shape {tuple(index.shape)}"
            )
        if not 0 <= int(layer) < num_layers:
            raise IndexError(
                f"neurons: layer {layer} out of range for a model with {num_layers} layers"
            )
        n = layer_width(width, int(layer))
        low = index.min() if not absent else torch.where(index == ABSENT, 0, index).min()
        if low < 0 or index.max() >= n:
            raise InputError(
                f"neurons[{layer}]: indices must lie in [0, {n}) for FFN "
                f"width {n}; got {index.min().item()}..{index.max().item()}"
            )
        if index.shape[1] > 1 and (index.sort(1).values.diff(dim=1) == 0).any():
            raise InputError(f"neurons[{layer}]: a neuron is listed twice")
        result[int(layer)] = index
    return result


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores along the last dim, descending; ties -> lower index
    first (so k = 1 is ``argmax``)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def gather_neurons(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (items, tokens, n), index (items, K) -> (items, tokens) summed over the K neurons
    (``ABSENT`` entries add nothing)."""
    if (index == ABSENT).any():
        return gather_units(x, index)
    return x.gather(2, index[:, None, :].expand(-1, x.shape[1], -1)).sum(-1)


def masks_for(
    index: Mapping[int, torch.Tensor], width: int | Sequence[int], dtype, device
) -> dict[int, torch.Tensor]:
    """``{layer: (items, K) indices}`` -> ``{layer: (items, width_l)}`` 0/1 masks of those
    neurons (``width``: one for all layers, or one per layer; ``ABSENT`` marks nothing)."""
    return {l: unit_mask(idx.to(device), layer_width(width, l), dtype) for l, idx in index.items()}


def stack_layers(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-layer scores (items, n_l) -> (items, layers, max n_l); where widths differ, the
    missing neurons of narrower layers score -inf, so no ranking ever picks them."""
    width = max(x.shape[-1] for x in per_layer)
    if all(x.shape[-1] == width for x in per_layer):
        return torch.stack(list(per_layer), dim=1)
    return torch.stack(
        [
            torch.nn.functional.pad(x, (0, width - x.shape[-1]), value=float("-inf"))
            for x in per_layer
        ],
        dim=1,
    )
