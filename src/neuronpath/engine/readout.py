"""Where the classifier head reads: a gradient probe decides the token policy of every block.

A neuron position whose FFN hidden state has zero gradient to the logits cannot carry a path.
After the last block only per-token operations (norm) and the head touch the tokens, so the
positions of the last block with a non-zero gradient are exactly the ones the head reads.
:func:`probe` runs one forward and one backward on two random inputs and reports, for every
block, its number of tokens, its FFN width and the positions that reach the logits.

:func:`settle_readout` turns that into one policy per block:

* the blocks of the last stage (the trailing blocks with the last block's token count; every
  block of a plain ViT) read the positions the head reads -- the official semantics, CLS at every
  layer of a CLS classifier (``docs/official-code.md#the-neuron``);
* blocks of earlier stages of a hierarchical model (Swin, CvT, PVT, Hiera: other token counts)
  read every position of theirs that reaches the logits, normally all of them.

A family table (the adapter's reading of the model's class and config) only *names and
explains* what the probe found; where the two disagree the probe wins and the disagreement is
logged.  A requested policy (``--token``) applies to the last stage and must lie within the
positions the head reads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..errors import InputError, option
from .tokens import TokenPolicy

log = logging.getLogger("neuronpath")


@dataclass(frozen=True)
class Probe:
    tokens: tuple[int, ...]  # per block: token positions of the FFN hidden state
    widths: tuple[int, ...]  # per block: FFN neurons
    reach: tuple[tuple[int, ...], ...]  # per block: positions whose neurons reach the logits

    @property
    def read(self) -> tuple[int, ...]:
        """The last block's positions that reach the logits: where the head reads."""
        return self.reach[-1]

    @property
    def hierarchical(self) -> bool:
        """Blocks of different token counts (Swin-style stages)."""
        return len(set(self.tokens)) > 1

    @property
    def last_stage(self) -> range:
        """The trailing blocks with the last block's token count."""
        first = len(self.tokens) - 1
        while first > 0 and self.tokens[first - 1] == self.tokens[-1]:
            first -= 1
        return range(first, len(self.tokens))


@dataclass(frozen=True)
class Readout:
    """The token policy of every block and why."""

    policies: tuple[TokenPolicy, ...]
    reason: str

    @property
    def head(self) -> TokenPolicy:
        """The last stage's policy (where the head reads), by which a run names its token."""
        return self.policies[-1]

    def describe(self) -> dict:
        stages = []
        for layer, policy in enumerate(self.policies):
            if stages and stages[-1]["policy"] == policy.name:
                stages[-1]["blocks"][1] = layer
            else:
                stages.append({"policy": policy.name, "blocks": [layer, layer]})
        return {"token": self.head.name, "why": self.reason, "per_block": stages}


def probe(adapter) -> Probe:
    """Token counts, widths and the positions that reach the logits, per block of the
    adapter's model (cached per adapter)."""
    if "_probe" in adapter.__dict__:
        return adapter.__dict__["_probe"]
    pixels = adapter.probe_input()
    layers = range(adapter.num_layers)
    shapes: dict[int, tuple[int, int]] = {}
    deltas: dict[int, torch.Tensor] = {}

    def make(layer):
        def hook(value):
            shapes[layer] = (value.shape[1], value.shape[-1])
            deltas[layer] = torch.zeros_like(value, requires_grad=True)
            return value + deltas[layer]

        return hook

    with torch.enable_grad(), adapter.hooks({l: make(l) for l in layers}):
        logits = adapter.logits(pixels)
    if len(shapes) != adapter.num_layers:
        missing = [adapter.site_names[l] for l in layers if l not in shapes]
        raise InputError(
            f"{type(adapter.model).__name__}: the sites {missing[:3]} did not run "
            f"in a forward pass; expected one FFN per block"
        )
    weights = torch.randn(
        logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    ).to(logits.device, logits.dtype)
    grads = torch.autograd.grad(
        (logits * weights).sum(), [deltas[l] for l in layers], allow_unused=True
    )
    reach = tuple(
        ()
        if g is None
        else tuple(int(p) for p in torch.nonzero(g.abs().sum(dim=(0, 2)) > 0).flatten())
        for g in grads
    )
    result = Probe(tuple(shapes[l][0] for l in layers), tuple(shapes[l][1] for l in layers), reach)
    adapter.__dict__["_probe"] = result
    return result


def settle_readout(
    adapter,
    requested: TokenPolicy | str | None = None,
    family: tuple[TokenPolicy, str] | None = None,
) -> Readout:
    """Every block's token policy (see the module docstring).

    ``family``: the policy a family table read off the model and the reason, used to name the
    probe's finding when they agree; ``requested``: a user's policy for the last stage, which
    must lie within the positions the head reads.  Raises :class:`InputError` naming the model
    class otherwise.
    """
    model = type(adapter.model).__name__
    found = probe(adapter)
    count = found.tokens[-1]
    if not found.read:
        raise InputError(
            f"{model}: no token of the last block's FFN reaches the logits "
            f"(gradient probe); expected a classifier whose head reads its tokens"
        )
    read = set(found.read)
    probed = TokenPolicy.from_positions(read, count)
    policy, reason = probed, f"gradient probe: the head reads positions {_ranges(read)} of {count}"
    if family is not None:
        named, why = family
        if set(_positions(named, count)) == read:
            policy, reason = named, why
        else:
            log.warning(
                "%s: its family table says the head reads %s (%s), but the gradient "
                "probe finds positions %s of %d; reading those (token %r)",
                model,
                why,
                named.name,
                _ranges(read),
                count,
                probed.name,
            )
    if requested is not None:
        if isinstance(requested, str):
            requested = TokenPolicy.parse(requested, distillation_index=adapter.distillation_index)
        dead = sorted(set(requested.positions(count)) - read)
        if dead:
            raise InputError(
                f"{option('token')}: {requested.name!r} includes positions "
                f"{_ranges(dead)} whose last-layer neurons cannot influence the "
                f"output of {model}; its head reads {reason} (token "
                f"{policy.name!r})"
            )
        policy, reason = requested, f"requested ({requested.name}); the head reads {reason}"
    last = found.last_stage
    policies = tuple(
        policy
        if layer in last
        else TokenPolicy.from_positions(
            found.reach[layer] or range(found.tokens[layer]), found.tokens[layer]
        )
        for layer in range(adapter.num_layers)
    )
    if found.hierarchical:
        reason += (
            (
                f"; blocks 0-{last.start - 1} (earlier stages, other token counts) read "
                f"every position that reaches the logits"
            )
            if last.start
            else ""
        )
    return Readout(policies, reason)


def _positions(policy: TokenPolicy, count: int) -> list[int]:
    """A policy's positions, or none where it does not fit ``count`` tokens."""
    try:
        return policy.positions(count)
    except InputError:
        return []


def _ranges(positions) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    positions, out = sorted(positions), []
    for p in positions:
        if out and out[-1][1] == p - 1:
            out[-1][1] = p
        else:
            out.append([p, p])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out)
