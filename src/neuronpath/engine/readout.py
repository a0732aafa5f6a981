"""Where the classifier head reads: a gradient probe, and the choice of token policy.

A neuron position whose last-layer FFN activation has zero gradient to the logits cannot carry a
path: after the last block only per-token operations (norm) and the head touch the tokens, so
the positions with a non-zero gradient are exactly the ones the head reads.  :func:`probe` runs
one forward and one backward on two random inputs and reports, for every layer, its number of
tokens and FFN width, and the positions the head reads.  :func:`settle_token_policy` then picks
the policy: the one a family adapter derived by inspecting the model (checked against the probe),
else the probed positions; a requested policy is checked against them and refused with a clear
message when it would read positions that cannot influence the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import option
from .adapter import ModelAdapter
from .tokens import TokenPolicy


@dataclass(frozen=True)
class Probe:
    tokens: tuple[int, ...]  # per layer: token positions of the FFN hidden state
    widths: tuple[int, ...]  # per layer: FFN neurons
    read: tuple[int, ...]  # last-layer positions whose neurons reach the logits

    @property
    def hierarchical(self) -> bool:
        """Blocks of different token counts (Swin-style stages)."""
        return len(set(self.tokens)) > 1


def probe(adapter: ModelAdapter) -> Probe:
    """Token counts, widths and read positions of the adapter's model (cached per adapter)."""
    if "_probe" in adapter.__dict__:
        return adapter.__dict__["_probe"]
    pixels = adapter.probe_input()
    last = adapter.num_layers - 1
    shapes: dict[int, tuple[int, int]] = {}
    delta: dict[str, torch.Tensor] = {}

    def make(layer):
        def hook(module, inputs, output):
            shapes[layer] = (output.shape[1], output.shape[-1])
            if layer == last:
                delta["value"] = torch.zeros_like(output, requires_grad=True)
                return output + delta["value"]
        return hook

    with torch.enable_grad(), adapter.hooks({l: make(l) for l in range(adapter.num_layers)}):
        logits = adapter.logits(pixels)
    if len(shapes) != adapter.num_layers or "value" not in delta:
        missing = [adapter.site_names[l] for l in range(adapter.num_layers) if l not in shapes]
        raise ValueError(f"{adapter.describe()['class']}: the sites {missing[:3]} did not run in "
                         f"a forward pass; expected one FFN activation module per block")
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64).to(logits.device, logits.dtype)
    grad, = torch.autograd.grad((logits * weights).sum(), delta["value"], allow_unused=True)
    read = () if grad is None else tuple(
        int(p) for p in torch.nonzero(grad.abs().sum(dim=(0, 2)) > 0).flatten())
    result = Probe(tuple(shapes[l][0] for l in range(adapter.num_layers)),
                   tuple(shapes[l][1] for l in range(adapter.num_layers)), read)
    adapter.__dict__["_probe"] = result
    return result


def settle_token_policy(adapter: ModelAdapter, requested: TokenPolicy | str | None = None,
                        derived: tuple[TokenPolicy, str] | None = None,
                        distillation_index: int | None = None) -> ModelAdapter:
    """Set ``adapter.token`` and ``adapter.readout`` (why), checked against the gradient probe.

    ``derived``: the policy a family adapter read off the model and the reason; without one the
    probed positions decide.  ``requested`` (a user's override) must lie within the positions
    the head reads.  Raises ``ValueError`` naming the model class and the positions otherwise.
    """
    model = adapter.describe()["class"]
    found = probe(adapter)
    count = found.tokens[-1]
    if not found.read:
        raise ValueError(f"{model}: no token of the last block's FFN reaches the logits "
                         f"(gradient probe); expected a classifier whose head reads its tokens")
    read = set(found.read)
    if derived is not None:
        policy, reason = derived
        if set(policy.positions(count)) != read:
            raise ValueError(f"{model}: the head should read {reason} ({policy.name}), but the "
                             f"gradient probe finds positions {_ranges(read)} of {count}; "
                             f"pass token explicitly")
    else:
        policy = TokenPolicy.from_positions(read, count)
        reason = f"gradient probe: the head reads positions {_ranges(read)} of {count}"
    if found.hierarchical and policy.spans != ((0, None),):
        raise ValueError(f"{model}: its blocks have different token counts "
                         f"({', '.join(map(str, sorted(set(found.tokens), reverse=True)))}), so a "
                         f"neuron is read over all of a block's tokens (token 'all')")
    if requested is not None:
        if isinstance(requested, str):
            requested = TokenPolicy.parse(requested, distillation_index=distillation_index)
        if found.hierarchical and requested.spans != ((0, None),):
            raise ValueError(f"{option('token')}: {model}'s blocks have different token counts, so only "
                             f"'all' is defined there, not {requested.name!r}")
        dead = sorted(set(requested.positions(count)) - read)
        if dead:
            raise ValueError(f"{option('token')}: {requested.name!r} includes positions {_ranges(dead)} whose "
                             f"last-layer neurons cannot influence the output of {model}; its head "
                             f"reads {reason} (token {policy.name!r})")
        policy, reason = requested, f"requested ({requested.name}); the head reads {reason}"
    adapter.token, adapter.readout = policy, reason
    return adapter


def _ranges(positions) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    positions, out = sorted(positions), []
    for p in positions:
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)
