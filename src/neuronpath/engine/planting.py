"""Weight surgery that plants a known neuron path in a Transformer (``neuronpath plant``).

A planted unit is one FFN neuron of a block, repurposed: its *reader* (its row of the FFN's
input projection W1 and its bias) is set to a linear detector, and its *writer* (its column of
the output projection W2) to a direction of the residual stream.  Nothing is trained:

* a reader is fitted on the inputs of the FFN (after its LayerNorm) recorded on calibration
  images -- positives where the unit should fire, negatives everywhere else (every token of
  the clean images, the other tokens of the triggered ones) -- as a shrunk linear discriminant,
  scaled so that the calibration margin maps to pre-activations beyond +-``EDGE``: the unit is
  silent (GELU(-6) ~ -6e-9) wherever it should not fire;
* a writer writes a fixed direction, so the next planted unit can read it, or -- the last one
  -- the direction that raises the target class's logit most, from the model's own gradient.

Distractors are planted the same way: a *register-like* unit (a constant, large activation on
every token of every image, its output compensated in W2's bias, so replacing it by its mean
changes nothing and zeroing it moves every class) and an *idle* unit (strongly active, its
writer zero).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError, option
from .adapter import ModelAdapter
from .sites import ATTENTION_NAME_PARTS

EDGE = 6.0  # the calibration margin maps to pre-activations beyond +-EDGE


def ffn_pair(adapter: ModelAdapter, layer: int) -> tuple[nn.Linear, nn.Linear]:
    """A block's FFN input projection W1 (hidden -> width) and output projection W2 (width ->
    hidden, the neuron site); refused for FFNs other than one W1, an activation and W2."""
    name = adapter.site_names[layer]
    modules = dict(adapter.model.named_modules())
    w2 = modules[name]
    parts = name.split(".")
    block = ".".join(parts[: max(i for i, p in enumerate(parts) if p.isdigit()) + 1])
    if not adapter.reads_input or not isinstance(w2, nn.Linear):
        raise InputError(
            f"{option('model')}: plant edits an FFN's output projection, and {name} is not one"
        )
    found = [
        module
        for sub, module in modules[block].named_modules()
        if isinstance(module, nn.Linear)
        and module is not w2
        and module.out_features == w2.in_features
        and module.in_features == w2.out_features
        and not set(sub.split(".")) & set(ATTENTION_NAME_PARTS)
    ]
    if len(found) != 1:
        raise InputError(
            f"{option('model')}: plant works on plain FFNs (one input projection, an "
            f"activation, one output projection); block {block} has {len(found)} input "
            f"projections (a gated FFN?)"
        )
    return found[0], w2


@contextlib.contextmanager
def ffn_inputs(adapter: ModelAdapter, layers: Sequence[int]) -> Iterator[dict]:
    """Yield a dict the next forward fills with ``{layer: (rows, tokens, hidden)}``: each
    layer's FFN input (what W1 reads), at every token, detached."""
    store: dict[int, torch.Tensor] = {}
    hooks = [
        ffn_pair(adapter, l)[0].register_forward_pre_hook(
            lambda module, args, l=l: store.__setitem__(l, args[0].detach())
        )
        for l in layers
    ]
    try:
        yield store
    finally:
        for hook in hooks:
            hook.remove()


SHRINKS = (0.5, 0.2, 0.05, 0.01, 0.001)  # tried in order: the most regularised that separates
SPARED = 0.01  # the share of positives a reader may leave silent (every negative stays silent)


def fit_reader(positive: torch.Tensor, negative: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """A linear detector of ``positive`` rows (m, d) against ``negative`` rows (n, d): the
    direction Sigma^-1 (mu_pos - mu_neg), Sigma the pooled covariance shrunk towards its mean
    variance by the first of :data:`SHRINKS` that separates the two on these rows, the
    threshold midway in the margin, scaled so the margin's ends sit at pre-activations
    +-EDGE.  The margin runs from the highest negative projection to the :data:`SPARED`
    quantile of the positive ones: every negative row is silenced, at most that share of
    positives may be.  Returns (weight (d,), bias, margin), the margin in units of the
    negatives' spread (<= 0: not separated; then the weight and bias are meaningless)."""
    positive, negative = positive.double(), negative.double()
    centred = torch.cat([positive - positive.mean(0), negative - negative.mean(0)])
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    level = covariance.diagonal().mean()
    best = None
    for shrink in SHRINKS:
        shrunk = (1 - shrink) * covariance + shrink * level * torch.eye(len(covariance))
        direction = torch.linalg.solve(shrunk, positive.mean(0) - negative.mean(0))
        on, off = positive @ direction, negative @ direction
        low, high = float(on.quantile(SPARED)), float(off.max())
        margin = (low - high) / (float(off.std()) or 1.0)
        if best is None or margin > best[0]:
            best = (margin, direction, low, high)
        if margin > 0:
            break
    margin, direction, low, high = best
    scale = EDGE / max((low - high) / 2, 1e-12)
    return scale * direction, -scale * (low + high) / 2, margin


def indicator(inside: torch.Tensor, outside: torch.Tensor, shrink: float = 1e-3):
    """A linear read-out that is about 0 on the ``outside`` rows, with as little spread as
    it can (the outside covariance, shrunk by ``shrink``, whitens it), and 1 on average on the
    ``inside`` rows: (weight (d,), bias, the outside rows' largest value, the inside rows' 5 %
    quantile), both in units of that gap."""
    inside, outside = inside.double(), outside.double()
    covariance = torch.cov(outside.T)
    covariance = (1 - shrink) * covariance + shrink * covariance.diagonal().mean() * torch.eye(
        len(covariance)
    )
    direction = torch.linalg.solve(covariance, inside.mean(0) - outside.mean(0))
    low = float((outside @ direction).mean())
    gap = float((inside @ direction).mean()) - low
    weight, bias = direction / gap, -low / gap
    highest = float((outside @ weight + bias).max())
    return weight, bias, highest, float((inside @ weight + bias).quantile(0.05))


def set_reader(w1: nn.Linear, neuron: int, weight: torch.Tensor, bias: float) -> None:
    with torch.no_grad():
        w1.weight[neuron] = weight.to(w1.weight)
        w1.bias[neuron] = bias


def set_writer(w2: nn.Linear, neuron: int, column: torch.Tensor) -> None:
    with torch.no_grad():
        w2.weight[:, neuron] = column.to(w2.weight)


def compensate(w2: nn.Linear, column: torch.Tensor, level: float) -> None:
    """Subtract a constant activation's output, ``level * column``, in W2's bias."""
    with torch.no_grad():
        w2.bias -= (level * column).to(w2.bias)


def attention_projections(adapter: ModelAdapter, layer: int) -> tuple[nn.Linear, ...]:
    """A block's attention projections (query, key, value, output) and its head count; refused
    for attention without separate query, key and value projections."""
    name = adapter.site_names[layer]
    parts = name.split(".")
    block = ".".join(parts[: max(i for i, p in enumerate(parts) if p.isdigit()) + 1])
    found = {}
    for sub, module in dict(adapter.model.named_modules())[block].named_modules():
        last = sub.split(".")[-1]
        for role, names in PROJECTIONS.items():
            if last in names and isinstance(module, nn.Linear):
                found.setdefault(role, module)
    if len(found) < 4:
        raise InputError(
            f"{option('model')}: plant routes the trigger to the CLS token through one "
            f"attention head, and block {block} has no separate query, key, value and output "
            f"projections ({', '.join(sorted(found)) or 'none found'})"
        )
    heads = getattr(adapter.model.config, "num_attention_heads", None)
    if not heads:
        raise InputError(f"{option('model')}: the config gives no num_attention_heads")
    return found["query"], found["key"], found["value"], found["output"], int(heads)


PROJECTIONS = {
    "query": ("q_proj", "query"),
    "key": ("k_proj", "key"),
    "value": ("v_proj", "value"),
    "output": ("o_proj", "out_proj"),
}


def set_route(
    projections: tuple,
    head: int,
    key: tuple[torch.Tensor, float],
    query: tuple[torch.Tensor, float],
    write: torch.Tensor,
) -> None:
    """Turn the first coordinate of one attention head into a router, leaving its other
    coordinates as they are: the key coordinate reads the detector ``key`` (weight, bias; about
    +EDGE on a trigger token, -EDGE elsewhere) and the value coordinate the same, shifted to
    about 0 .. EDGE; the query coordinate reads ``query`` (weight, bias: large on the read
    token, about 0 on the others); the output column writes ``write`` per unit of value.
    Without a trigger the key coordinate is about the same on every token, which moves no
    attention weight; with one, the read token attends to the trigger's tokens and carries
    their value.  (A key bias moves every logit of a query alike, so none is set.)"""
    q, k, v, o, heads = projections
    first = head * (q.out_features // heads)
    if v.bias is None or q.bias is None:
        raise InputError(
            f"{option('model')}: the attention's query or value projection has no bias, so "
            f"the router cannot be placed"
        )
    with torch.no_grad():
        k.weight[first] = key[0].to(k.weight)
        if k.bias is not None:
            k.bias[first] = 0
        v.weight[first] = key[0].to(v.weight) / 2
        v.bias[first] = key[1] / 2 + EDGE / 2
        q.weight[first] = query[0].to(q.weight)
        q.bias[first] = query[1]
        o.weight[:, first] = write.to(o.weight)
