"""Forward-hook interventions on the FFN neurons of a model (``docs/official-code.md#the-neuron``).

Each intervention is a context manager over a :class:`~neuronpath.engine.adapter.ModelAdapter`
that hooks every block's FFN hidden state (``adapter.hooks``) and always removes its hooks,
also when the body raises.  Every read and edit happens at the token policy of its block
(``adapter.token_at``).

* :func:`record_neurons` -- read every layer's neuron vector in a pass;
* :func:`replace_neurons` -- replace a layer's neuron vector by a given tensor, so that
  gradients flow to that tensor (used by attribution);
* :func:`add_to_neurons` -- add a tensor to a layer's neuron vector; with zeros this changes
  nothing but makes dF/d(delta) the total derivative dF/dh_l of the unmodified network;
* :func:`multiply_neurons` -- multiply each layer's neurons by a per-row factor vector
  (pruning masks);
* :func:`ablate_neurons` -- replace chosen neurons by given values (mean and resample
  ablation);
* :func:`scale_neurons` -- multiply chosen neurons by a factor (0 removes, 2 enhances).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

from ..errors import InputError
from .adapter import ModelAdapter


@contextlib.contextmanager
def record_neurons(
    adapter: ModelAdapter, layers=None, all_tokens: bool = False
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield a dict that the next forward fills with ``{layer: (rows, tokens, n)}`` tensors
    (the post-activation FFN hidden state at the adapter's token policy, or at every token with
    ``all_tokens``, detached)."""
    layers = range(adapter.num_layers) if layers is None else layers
    store: dict[int, torch.Tensor] = {}

    def make(layer):
        def hook(value):
            store[layer] = (value if all_tokens else adapter.token_at(layer).select(value)).detach()

        return hook

    with adapter.hooks({layer: make(layer) for layer in layers}):
        yield store


@contextlib.contextmanager
def replace_neurons(adapter: ModelAdapter, values: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Replace layer l's neurons at the adapter's token(s) by ``values[l]``
    (shape (rows, tokens, n), matching the batch that is run inside the context)."""

    def make(layer):
        value = values[layer]

        def hook(hidden):
            if value.shape[0] != hidden.shape[0]:
                raise InputError(
                    f"replace_neurons: layer {layer} got {value.shape[0]} rows of "
                    f"values for a batch of {hidden.shape[0]}"
                )
            return adapter.token_at(layer).insert(hidden, value)

        return hook

    with adapter.hooks({layer: make(layer) for layer in values}):
        yield


@contextlib.contextmanager
def add_to_neurons(adapter: ModelAdapter, deltas: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Add ``deltas[l]`` (shape (rows, tokens, n)) to layer l's neurons at the adapter's
    token(s)."""

    def make(layer):
        delta, token = deltas[layer], adapter.token_at(layer)

        def hook(hidden):
            return token.insert(hidden, token.select(hidden) + delta)

        return hook

    with adapter.hooks({layer: make(layer) for layer in deltas}):
        yield


def _multiplying(
    adapter: ModelAdapter, layer_factors: Mapping[int, Callable]
) -> contextlib.AbstractContextManager:
    """Hooks that multiply layer l's selected neurons by ``layer_factors[l](selected)``, a
    (rows, n) factor per row, downstream recomputed."""

    def make(layer, factor_of):
        token = adapter.token_at(layer)

        def hook(hidden):
            selected = token.select(hidden)
            return token.insert(hidden, selected * factor_of(selected)[:, None, :])

        return hook

    return adapter.hooks({layer: make(layer, f) for layer, f in layer_factors.items()})


@contextlib.contextmanager
def multiply_neurons(
    adapter: ModelAdapter, multipliers: Mapping[int, torch.Tensor]
) -> Iterator[None]:
    """Multiply layer l's neurons at the adapter's token(s) by ``multipliers[l]`` (rows, n)."""

    def factor(multiplier):
        return lambda selected: multiplier.to(selected.device, selected.dtype)

    with _multiplying(adapter, {l: factor(m) for l, m in multipliers.items()}):
        yield


@contextlib.contextmanager
def ablate_neurons(
    adapter: ModelAdapter,
    edits: Mapping[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> Iterator[None]:
    """Edit each row's neurons at the adapter's token(s), downstream recomputed:
    ``edits[l] = (multiplier, ablated, source, which)`` sets layer l's neurons of row r to
    ``h * multiplier[r] + source[which[r]] * ablated[r]`` -- ``multiplier`` and ``ablated``
    (rows, n), ``source`` (sources, positions, n) the values ablated neurons take (zeros, a
    reference mean, another image's values: zero, mean and resample ablation), ``which``
    (rows,) the source of each row."""

    def make(layer, multiplier, ablated, source, which):
        token = adapter.token_at(layer)

        def hook(hidden):
            selected = token.select(hidden)
            like = {"device": selected.device, "dtype": selected.dtype}
            values = source.to(**like)[which.to(selected.device)]
            new = (
                selected * multiplier.to(**like)[:, None, :]
                + values * ablated.to(**like)[:, None, :]
            )
            return token.insert(hidden, new)

        return hook

    with adapter.hooks({l: make(l, *edit) for l, edit in edits.items()}):
        yield


@contextlib.contextmanager
def scale_neurons(
    adapter: ModelAdapter, neurons: Mapping[int, torch.Tensor], factor: float | torch.Tensor
) -> Iterator[None]:
    """Multiply chosen neurons by ``factor`` at the adapter's token(s), downstream recomputed.

    ``neurons[l]`` holds neuron indices of layer l, shape (rows,) or (rows, K): one set per row
    of the batch run inside the context.  ``factor=0`` is removal, ``factor=2`` enhancement;
    a tensor of shape (rows,) gives each row its own factor.
    """

    def scale(index):
        index = torch.as_tensor(index)
        index = index.reshape(index.shape[0], -1)

        def factor_of(selected):
            ones = torch.ones(
                selected.shape[0], selected.shape[-1], dtype=selected.dtype, device=selected.device
            )
            rows = torch.as_tensor(factor, dtype=selected.dtype, device=selected.device)
            rows = rows.reshape(-1, 1).expand(index.shape[0], index.shape[1])
            return ones.scatter_(1, index.to(selected.device), rows)

        return factor_of

    with _multiplying(adapter, {l: scale(i) for l, i in neurons.items()}):
        yield
