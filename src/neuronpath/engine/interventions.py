"""Forward-hook interventions on the units of a model -- FFN neurons
(``docs/official-code.md#the-neuron``) or attention heads (:mod:`neuronpath.engine.units`).

Each intervention is a context manager over a :class:`~neuronpath.engine.adapter.ModelAdapter`
that hooks every site's hidden state (``adapter.hooks``) and always removes its hooks, also when
the body raises.  Every read and edit happens at the token policy of its site
(``adapter.token_at``); values, deltas and factors are given in unit space (one number per unit
and token) and written into the site's coordinates by its unit map (``adapter.units``).

* :func:`record_neurons` -- read every layer's unit values (or coordinates) in a pass;
* :func:`replace_neurons` -- replace a layer's unit values by a given tensor, along the units'
  directions in given coordinates, so that gradients flow to that tensor (used by attribution);
* :func:`add_to_neurons` -- add a tensor to a layer's unit values; with zeros this changes
  nothing but makes dF/d(delta) the total derivative dF/dh_l of the unmodified network;
* :func:`multiply_neurons` -- multiply each layer's units by a per-row factor vector
  (pruning masks);
* :func:`ablate_neurons` -- replace chosen units by given coordinates (mean and resample
  ablation);
* :func:`scale_neurons` -- multiply chosen units by a factor (0 removes, 2 enhances).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

from ..errors import InputError
from .adapter import ModelAdapter
from .units import scatter_units


@contextlib.contextmanager
def record_neurons(
    adapter: ModelAdapter, layers=None, all_tokens: bool = False, coordinates: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that the next forward fills with ``{layer: (rows, tokens, n)}`` tensors:
    the unit values (the post-activation FFN hidden state; each head's norm) at the adapter's
    token policy, or at every token with ``all_tokens``, detached; with ``coordinates``, the
    site's coordinates instead (the same for neurons)."""
    layers = range(adapter.num_layers) if layers is None else layers
    store: dict[int, torch.Tensor] = {}

    def make(layer):
        units = adapter.units(layer)

        def hook(value):
            value = (value if all_tokens else adapter.token_at(layer).select(value)).detach()
            store[layer] = value if coordinates else units.values(value)

        return hook

    with adapter.hooks({layer: make(layer) for layer in layers}):
        yield store


@contextlib.contextmanager
def replace_neurons(
    adapter: ModelAdapter,
    values: Mapping[int, torch.Tensor],
    directions: Mapping[int, torch.Tensor] | None = None,
    active: Mapping[int, torch.Tensor] | None = None,
) -> Iterator[None]:
    """Replace layer l's units at the adapter's token(s) by ``values[l]`` (rows, tokens, n),
    matching the batch that is run inside the context.  For units of several coordinates
    (heads) each value is placed along the unit's direction in ``directions[l]`` (rows, tokens,
    coords: the coordinates the values were read from).  ``active[l]`` (rows,) bool: rows
    where it is False run through layer l unedited (a mixed path with no unit there)."""

    def make(layer):
        value, units = values[layer], adapter.units(layer)
        token = adapter.token_at(layer)

        def hook(hidden):
            if value.shape[0] != hidden.shape[0]:
                raise InputError(
                    f"replace_neurons: layer {layer} got {value.shape[0]} rows of "
                    f"values for a batch of {hidden.shape[0]}"
                )
            new = value if units.identity else units.embed(value, directions[layer])
            if active is not None and layer in active:
                keep = active[layer].to(hidden.device)[:, None, None]
                new = torch.where(keep, new.to(hidden.dtype), token.select(hidden))
            return token.insert(hidden, new)

        return hook

    with adapter.hooks({layer: make(layer) for layer in values}):
        yield


@contextlib.contextmanager
def add_to_neurons(adapter: ModelAdapter, deltas: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add ``deltas[l]`` (shape (rows, tokens, n), unit space) to layer l's units at the
    adapter's token(s); a head's delta moves it along its current direction."""

    def make(layer):
        delta, token, units = deltas[layer], adapter.token_at(layer), adapter.units(layer)

        def hook(hidden):
            selected = token.select(hidden)
            return token.insert(hidden, selected + units.embed_delta(delta, selected.detach()))

        return hook

    with adapter.hooks({layer: make(layer) for layer in deltas}):
        yield


def _multiplying(
    adapter: ModelAdapter, layer_factors: Mapping[int, Callable]
) -> contextlib.AbstractContextManager:
    """Hooks that multiply layer l's selected units by ``layer_factors[l](selected)``, a
    (rows, n) factor per row and unit, downstream recomputed."""

    def make(layer, factor_of):
        token, units = adapter.token_at(layer), adapter.units(layer)

        def hook(hidden):
            selected = token.select(hidden)
            return token.insert(hidden, units.multiply(selected, factor_of(selected)[:, None, :]))

        return hook

    return adapter.hooks({layer: make(layer, f) for layer, f in layer_factors.items()})


@contextlib.contextmanager
def multiply_neurons(
    adapter: ModelAdapter, multipliers: Mapping[int, torch.Tensor]
) -> Iterator[None]:
    """Multiply layer l's units at the adapter's token(s) by ``multipliers[l]`` (rows, n)."""

    def factor(multiplier):
        return lambda selected: multiplier.to(selected.device, selected.dtype)

    with _multiplying(adapter, {l: factor(m) for l, m in multipliers.items()}):
        yield


@contextlib.contextmanager
def ablate_neurons(
    adapter: ModelAdapter,
    edits: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Iterator[None]:
    """Edit each row's units at the adapter's token(s), downstream recomputed:
    ``edits[l] = (multiplier, ablated, source, which)`` sets layer l's units of row r to
    ``h * multiplier[r] + source[which[r]] * ablated[r]`` -- ``multiplier`` and ``ablated``
    (rows, n) per unit, ``source`` (sources, positions, width) what ablated units take (zeros,
    a reference mean, another image's values: zero, mean and resample ablation) in the unit
    map's source space (``UnitMap.source``: coordinates; an SAE's latent values), ``which``
    (rows,) the source of each row."""

    def make(layer, multiplier, ablated, source, which):
        token, units = adapter.token_at(layer), adapter.units(layer)

        def hook(hidden):
            selected = token.select(hidden)
            like = {"device": selected.device, "dtype": selected.dtype}
            values = source.to(**like)[which.to(selected.device)]
            new = units.ablate(
                selected,
                multiplier.to(**like)[:, None, :],
                ablated.to(**like)[:, None, :],
                values,
            )
            return token.insert(hidden, new)

        return hook

    with adapter.hooks({l: make(l, *edit) for l, edit in edits.items()}):
        yield


@contextlib.contextmanager
def scale_neurons(
    adapter: ModelAdapter, neurons: Mapping[int, torch.Tensor], factor: float | torch.Tensor
) -> Iterator[None]:
    """Multiply chosen units by ``factor`` at the adapter's token(s), downstream recomputed.

    ``neurons[l]`` holds unit indices of layer l, shape (rows,) or (rows, K): one set per row
    of the batch run inside the context (``ABSENT`` entries scale nothing).  ``factor=0`` is
    removal, ``factor=2`` enhancement; a tensor of shape (rows,) gives each row its own factor.
    """

    def scale(layer, index):
        index = torch.as_tensor(index)
        index = index.reshape(index.shape[0], -1)
        count = adapter.units(layer).count

        def factor_of(selected):
            rows = torch.as_tensor(factor, dtype=selected.dtype, device=selected.device)
            rows = rows.reshape(-1, 1).expand(index.shape[0], index.shape[1])
            n = selected.shape[-1] if count is None else count
            return scatter_units(index.to(selected.device), n, rows, 1.0, selected.dtype)

        return factor_of

    with _multiplying(adapter, {l: scale(l, i) for l, i in neurons.items()}):
        yield
