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

A block's **attention heads** live in the same way at the *input of its attention output
projection* (ViT's ``o_proj``, CLIP's ``out_proj``, BEiT's ``output.dense``, Hiera's ``proj``):
the heads' outputs concatenated head-major, one head_dim slice per head, before they are mixed.
:func:`find_attention_sites` finds, in each block of :func:`find_ffn_sites`, the outermost
attention-named module (``attention``, ``attn``, ``self_attn``), its last ``nn.Linear`` to run
(the same forward-order rule), and its head count from the attribute every supported family
sets (``num_attention_heads``, ``num_heads`` or ``heads``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import InputError, option
from ..pathformat import UNIT_SETS
from .units import UnitMap

FFN_NAME_PARTS = ("intermediate", "mlp", "ffn", "feed_forward", "feedforward")
ATTENTION_NAME_PARTS = ("attention", "attn", "self_attn", "self_attention")
HEAD_COUNT_NAMES = ("num_attention_heads", "num_heads", "heads", "n_heads")


def _named_in_blocks(model: nn.Module, parts_named) -> dict[str, str]:
    """``{block name: its outermost module named one of parts_named}`` in registration
    order; blocks are items of module lists (a numbered name part)."""
    found: dict[str, str] = {}
    for name, _ in model.named_modules():
        parts = name.split(".")
        if parts[-1].lower() not in parts_named:
            continue
        numbered = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if not numbered:
            continue
        block = ".".join(parts[: numbered[-1] + 1])
        inner = name[len(block) + 1 :].split(".")
        if block not in found and not any(p.lower() in parts_named for p in inner[:-1]):
            found[block] = name
    return found


def ffn_modules(model: nn.Module) -> dict[str, str]:
    """``{block name: its outermost FFN-named module}`` in registration (depth) order."""
    return _named_in_blocks(model, FFN_NAME_PARTS)


def _forward_order(model, forward, input_shape, blocks) -> list[str]:
    """The qualified names of the modules inside ``blocks`` in the order they run, one entry
    per call, in one forward on two seeded random inputs of ``input_shape``."""
    param = next(iter(model.parameters()))
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn((2, *input_shape), generator=generator, dtype=torch.float64)
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
    return calls


def _output_projection(model, calls, modules, block, part, what) -> str | None:
    """The last ``nn.Linear`` of ``block`` to run after its module ``part`` starts (None where
    ``part`` does not run in the forward)."""
    mine = [(i, n) for i, n in enumerate(calls) if n.startswith(block + ".")]
    start = next((i for i, n in mine if n == part or n.startswith(part + ".")), None)
    if start is None:
        return None
    after = [n for i, n in mine if i >= start and isinstance(modules[n], nn.Linear)]
    if what == "attention":  # the projection is inside the attention module
        after = [n for n in after if n.startswith(part + ".")]
    if not after or calls.count(after[-1]) != 1:
        raise InputError(
            f"{type(model).__name__}: could not find the output projection "
            f"of the {what} {part} (an nn.Linear that runs once, after it starts); "
            f"build a ModelAdapter naming the sites explicitly"
        )
    return after[-1]


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
    blocks = ffn_modules(model)
    modules = dict(model.named_modules())
    calls = _forward_order(model, forward, input_shape, blocks)
    sites = []
    for block, ffn in blocks.items():
        site = _output_projection(model, calls, modules, block, ffn, "FFN")
        if site is not None:  # None: this block's FFN does not run in the model's forward
            sites.append(site)
    if not sites or (num_layers is not None and len(sites) != num_layers):
        raise InputError(
            f"{type(model).__name__}: could not find one FFN per block: found {len(sites)} "
            f"({sites[:4]}{'...' if len(sites) > 4 else ''}) for {num_layers} blocks. Build a "
            f"ModelAdapter(model, site_names=[...]) naming them explicitly."
        )
    return sites


def find_attention_sites(
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    input_shape: tuple[int, ...],
    ffn_sites: list[str],
) -> list[tuple[str, int]]:
    """``(name, heads)`` per block of ``ffn_sites``: the attention output projection whose
    *input* is the block's heads' output, and its head count (see the module docstring).
    Raises :class:`InputError` naming the model class where a block's heads cannot be located
    -- never a guess."""
    model_name = type(model).__name__
    attention = _named_in_blocks(model, ATTENTION_NAME_PARTS)
    blocks = [b for b in attention if any(s.startswith(b + ".") for s in ffn_sites)]
    modules = dict(model.named_modules())
    calls = _forward_order(model, forward, input_shape, blocks)
    found = []
    for site in ffn_sites:
        block = next((b for b in blocks if site.startswith(b + ".")), None)
        if block is None:
            raise InputError(
                f"{model_name}: no attention module (named {', '.join(ATTENTION_NAME_PARTS)}) "
                f"in the block of {site}, so its heads cannot be located; expected a "
                f"Transformer block with a standard attention module"
            )
        part = attention[block]
        name = _output_projection(model, calls, modules, block, part, "attention")
        if name is None:
            raise InputError(f"{model_name}: the attention {part} does not run in a forward")
        heads = next(
            (
                getattr(m, a)
                for _, m in modules[part].named_modules()
                for a in HEAD_COUNT_NAMES
                if isinstance(getattr(m, a, None), int) and getattr(m, a) > 0
            ),
            None,
        )
        width = modules[name].in_features
        if heads is None or width % heads:
            raise InputError(
                f"{model_name}: the head count of {part} cannot be read (no attribute "
                f"{' / '.join(HEAD_COUNT_NAMES)} dividing its {width} output features), so "
                f"its heads cannot be located"
            )
        found.append((name, heads))
    return found


def unit_sites(
    model: nn.Module,
    forward: Callable[[torch.Tensor], object],
    input_shape: tuple[int, ...],
    ffn_sites: list[str],
    units: str = "neurons",
) -> dict:
    """The :class:`~neuronpath.engine.adapter.ModelAdapter` keywords for a path of ``units``:
    the FFN sites (``neurons``), the attention sites (``heads``), or both, two sites per block
    in forward order, heads first (``neurons+heads``); each with its unit map
    (:mod:`neuronpath.engine.units`), its block, and the attention sites marked as ones that
    may see windows folded into the batch (windowed attention)."""
    if units not in UNIT_SETS:
        raise InputError(
            f"{option('units')}: expected one of {', '.join(UNIT_SETS)}, got {units!r}"
        )
    modules = dict(model.named_modules())
    neurons = [(name, UnitMap.neurons(modules[name].in_features)) for name in ffn_sites]
    if units == "neurons":
        return {"ffn_inputs": ffn_sites, "units": [m for _, m in neurons]}
    heads = [
        (name, UnitMap.heads(count, modules[name].in_features // count))
        for name, count in find_attention_sites(model, forward, input_shape, ffn_sites)
    ]
    per_block = [[h] for h in heads] if units == "heads" else [list(p) for p in zip(heads, neurons)]
    sites = [site for block in per_block for site in block]
    kinds = [m.kind for _, m in sites]
    return {
        "ffn_inputs": [name for name, _ in sites],
        "units": [m for _, m in sites],
        "blocks": [b for b, block in enumerate(per_block) for _ in block],
        "folded": [i for i, kind in enumerate(kinds) if kind == "head"],
    }
