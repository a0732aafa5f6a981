"""Where a block's FFN neurons live: the input of its FFN output projection.

Every Transformer FFN ends in an output projection W2: plain FFNs compute ``act(x W1) W2``, gated
ones (SwiGLU: DINOv2-giant, EVA-02, LLaMA-style vision towers) ``(act(x Wg) * x Wu) W2``. The FFN's
hidden state -- the neuron vector of the paper, "after GELU" in its ViTs (see
``docs/official-code.md#the-neuron``) -- is in both cases exactly the *input* of W2, so one rule
serves plain and gated FFNs alike.  (In eval mode the dropout between the activation and W2 is the
identity, so for plain FFNs this is the activation's output, the site earlier versions hooked, value
for value.)

:func:`find_ffn_sites` finds W2 in every block in two steps:

1. **Blocks** are items of module lists (a numbered name part) that hold an FFN-named module
   (``mlp``, ``ffn``, ``intermediate``, ``feed_forward``, ``feedforward``); heads and poolers
   with an MLP of their own (SigLIP's attention-pooling head) are not numbered, so not blocks.
2. **One forward pass** on a probe input records the order in which each block's modules run;
   W2 is the last ``nn.Linear`` of the block to run after the FFN module's first computation
   (ViT's ``output.dense`` runs after ``intermediate``; LLaMA-style ``down_proj`` after
   ``gate_proj``, ``act`` and ``up_proj``; DINOv2's SwiGLU ``weights_out`` after
   ``weights_in``; Hiera's pooling ``proj``, registered after the MLP, runs before it).
   Blocks whose FFN does not run in the forward (a text tower beside an image tower) are not
   sites.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError

FFN_NAME_PARTS = ("intermediate", "mlp", "ffn", "feed_forward", "feedforward")


def ffn_modules(model: nn.Module) -> dict[str, str]:
    """``{block name: its outermost FFN-named module}`` in registration (depth) order."""
    found: dict[str, str] = {}
    for name, _ in model.named_modules():
        parts = name.split(".")
        if parts[-1].lower() not in FFN_NAME_PARTS:
            continue
        numbered = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if not numbered:
            continue
        block = ".".join(parts[: numbered[-1] + 1])
        inner = name[len(block) + 1 :].split(".")
        if block not in found and not any(p.lower() in FFN_NAME_PARTS for p in inner[:-1]):
            found[block] = name
    return found


def find_ffn_sites(
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    input_shape: tuple[int, ...],
    num_layers: int | None = None,
) -> list[str]:
    """Names of the FFN output projections, one per block in depth order, whose *input* is the
    block's FFN hidden state (see the module docstring).  ``forward(pixels)`` runs the model on
    two seeded random inputs of ``input_shape``; ``num_layers``, when given, is the number of
    blocks expected."""
    param = next(iter(model.parameters()))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((2, *input_shape), generator=generator, dtype=torch.float64)
    blocks = ffn_modules(model)
    modules = dict(model.named_modules())
    calls: list[str] = []
    handles = []

    def note(name):
        def hook(module, args):
            calls.append(name)

        return hook

    try:
        for block in blocks:
            for name, module in modules[block].named_modules(prefix=block):
                if name != block:
                    handles.append(module.register_forward_pre_hook(note(name)))
        with torch.inference_mode():
            forward(pixels.to(param.device, param.dtype))
    finally:
        for handle in handles:
            handle.remove()
    sites = []
    for block, ffn in blocks.items():
        mine = [(i, n) for i, n in enumerate(calls) if n.startswith(block + ".")]
        start = next((i for i, n in mine if n == ffn or n.startswith(ffn + ".")), None)
        if start is None:
            continue  # this block's FFN does not run in the model's forward
        after = [n for i, n in mine if i >= start and isinstance(modules[n], nn.Linear)]
        if not after or calls.count(after[-1]) != 1:
            raise InputError(
                f"{type(model).__name__}: could not find the output projection "
                f"of the FFN {ffn} (an nn.Linear that runs once, after it starts); "
                f"build a ModelAdapter naming the sites explicitly"
            )
        sites.append(after[-1])
    if not sites or (num_layers is not None and len(sites) != num_layers):
        raise InputError(
            f"{type(model).__name__}: could not find one FFN per block: found {len(sites)} "
            f"({sites[:4]}{'...' if len(sites) > 4 else ''}) for {num_layers} blocks. Build a "
            f"ModelAdapter(model, site_names=[...]) naming them explicitly."
        )
    return sites
