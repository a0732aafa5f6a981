"""Derivatives of the unedited network, row by row: the total derivative of F with respect to
every layer's neurons (reverse mode, one backward for all layers), and the derivative of every
neuron of one layer along one direction -- the input, or one neuron of an earlier layer --
(forward mode, one pass for all neurons of that layer).

A neuron read at several positions is one node of the graph per position: every derivative is
returned per read position, and a direction in an earlier layer's neuron is a vector over that
layer's read positions (for a CLS policy: one position).  Units of several coordinates
(attention heads) move along their current direction and are read as their norm
(:mod:`neuronpath.engine.units`).

Forward mode needs every operation to have a forward derivative; PyTorch's fused attention
kernels have none on the CPU, so these passes run scaled-dot-product attention on its
``math`` kernel (the same computation, written with matrix products and a softmax).
"""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.autograd.forward_ad as forward_ad
from torch.nn.attention import SDPBackend, sdpa_kernel

from .adapter import ModelAdapter
from .attribution import objective


def total_gradients(
    adapter: ModelAdapter, rows: torch.Tensor, targets: torch.Tensor, kind: str = "prob"
) -> list[torch.Tensor]:
    """Per layer, dF/dh_l of each row at each of the layer's read positions, (rows, P_l, n_l):
    the total derivative in the unedited network (a zero added to every layer's neurons is the
    variable)."""
    layers = range(adapter.num_layers)
    zeros: dict[int, torch.Tensor] = {}

    def make(layer):
        token, units = adapter.token_at(layer), adapter.units(layer)

        def hook(hidden):
            selected = token.select(hidden)
            zeros[layer] = torch.zeros(
                selected.shape[:-1] + (selected.shape[-1] if units.identity else units.count,),
                dtype=selected.dtype,
                device=selected.device,
                requires_grad=True,
            )
            delta = units.embed_delta(zeros[layer], selected.detach())
            return token.insert(hidden, selected + delta)

        return hook

    with torch.enable_grad(), adapter.hooks({l: make(l) for l in layers}):
        f = objective(adapter.logits(rows), targets, kind).sum()
    grads = torch.autograd.grad(f, [zeros[l] for l in layers])
    return [g.detach() for g in grads]


def directional_derivatives(
    adapter: ModelAdapter,
    rows: torch.Tensor,
    read: int,
    input_tangent: torch.Tensor | None = None,
    neuron: tuple[int, torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """d h_read / d t of every neuron of layer ``read`` at each of its read positions,
    (rows, P_read, n), along ``input_tangent`` (rows, C, H, W) of the input, or along one
    neuron per row of an earlier layer moved by a vector over that layer's read positions
    (``neuron = (layer, index (rows,), tangent (rows, P_layer))``): the Jacobian from the
    earlier layer's positions to this layer's, applied to that vector."""
    found: dict[str, torch.Tensor] = {}
    hooks = {}
    if neuron is not None:
        layer, index, along = neuron
        token, units = adapter.token_at(layer), adapter.units(layer)

        def seed(hidden):
            selected = token.select(hidden)
            primal = forward_ad.unpack_dual(selected).primal.detach()
            count = selected.shape[-1] if units.identity else units.count
            tangent = torch.zeros(selected.shape[:-1] + (count,), dtype=selected.dtype)
            tangent = tangent.to(selected.device)
            tangent[torch.arange(len(index)), :, index.to(selected.device)] = along.to(tangent)
            zero = torch.zeros_like(tangent)
            dual = units.embed_delta(forward_ad.make_dual(zero, tangent), primal)
            return token.insert(hidden, selected + dual)

        hooks[layer] = seed

    def take(hidden):
        selected = forward_ad.unpack_dual(adapter.token_at(read).select(hidden))
        tangent = selected.tangent
        if tangent is not None:
            tangent = adapter.units(read).project(tangent, selected.primal.detach())
        found["tangent"] = tangent
        found["positions"] = selected.primal.shape[1]

    hooks[read] = take
    with contextlib.ExitStack() as stack:
        # torch loads its forward-mode decompositions with a deprecated scripting call, once
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", DeprecationWarning)
        stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        stack.enter_context(forward_ad.dual_level())
        stack.enter_context(adapter.hooks(hooks))
        pixels = rows.to(adapter.device, adapter.dtype)
        if input_tangent is not None:
            pixels = forward_ad.make_dual(pixels, input_tangent.to(pixels.device, pixels.dtype))
        adapter.logits(pixels)
    tangent = found.get("tangent")
    if tangent is None:  # no path from the seed to the layer read
        shape = (rows.shape[0], found["positions"], adapter.widths()[read])
        return torch.zeros(shape, dtype=adapter.dtype, device=adapter.device)
    return tangent
