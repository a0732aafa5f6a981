"""Weight-surgery primitives that plant a known chain of units in a Transformer
(``neuronpath plant``; the chain itself is built by :mod:`.chain`).

A planted unit is one FFN neuron of a block, repurposed: its *reader* (its row of the FFN's
input projection W1 and its bias) and its *writer* (its column of the output projection W2).
Nothing is trained.  The chain is wired through **quiet directions**: a writer writes along
the direction of the next planted block's normalised FFN input that varies least on the
calibration images (:func:`quiet_direction`), and the next reader reads that direction only
(:func:`set_direction_reader`), so a reader cannot fire on anything but the write before it.

The units' levels are natural: a reader maps the calibration tokens where it must stay silent to
pre-activations at or below ``-SILENT`` and its typical positive token to the level asked
(:func:`calibrate`), a level taken from the layer's own activations; the writer's column is
scaled to carry the signal at that level.

Verification edits the units with plain hooks at every token (:func:`edit_units`): zero, a
per-position mean, or another image's values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..errors import InputError, option
from .adapter import ModelAdapter
from .sites import ATTENTION_NAME_PARTS

SILENT = 5.0  # a silent unit's pre-activation, at most (GELU(-5) ~ -1.4e-6)


def block_name(adapter: ModelAdapter, layer: int) -> str:
    """The module name of the block holding ``layer``'s site."""
    parts = adapter.site_names[layer].split(".")
    return ".".join(parts[: max(i for i, p in enumerate(parts) if p.isdigit()) + 1])


def ffn_pair(adapter: ModelAdapter, layer: int) -> tuple[nn.Linear, nn.Linear]:
    """A block's FFN input projection W1 (hidden -> width) and output projection W2 (width ->
    hidden, the neuron site); refused for FFNs other than one W1, an activation and W2."""
    name = adapter.site_names[layer]
    modules = dict(adapter.model.named_modules())
    w2 = modules[name]
    block = block_name(adapter, layer)
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


PROJECTIONS = {
    "query": ("q_proj", "query"),
    "key": ("k_proj", "key"),
    "value": ("v_proj", "value"),
    "output": ("o_proj", "out_proj"),
}


def attention_projections(adapter: ModelAdapter, layer: int) -> tuple:
    """A block's attention projections (query, key, value, output) and its head count; refused
    for attention without separate query, key and value projections."""
    block = block_name(adapter, layer)
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


def input_norm(adapter: ModelAdapter, layer: int, reader: nn.Linear) -> nn.LayerNorm:
    """The LayerNorm of ``layer``'s block whose output ``reader`` (W1, or the query
    projection) reads, found by a probe pass; refused where there is none (a post-norm block)."""
    norms = [
        m
        for m in dict(adapter.model.named_modules())[block_name(adapter, layer)].modules()
        if isinstance(m, nn.LayerNorm)
    ]
    outputs, seen = {}, {}
    hooks = [
        n.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
        for i, n in enumerate(norms)
    ]
    hooks.append(reader.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0])))
    try:
        with torch.inference_mode():
            adapter.logits(adapter.probe_input(1))
    finally:
        for hook in hooks:
            hook.remove()
    for i, out in outputs.items():
        if "x" in seen and out.shape == seen["x"].shape and torch.equal(out, seen["x"]):
            return norms[i]
    raise InputError(
        f"{option('model')}: plant reads a block's normalised input, and block "
        f"{block_name(adapter, layer)} feeds no LayerNorm's output to {type(reader).__name__} "
        f"(a post-norm block?)"
    )


@contextlib.contextmanager
def normalised_inputs(norms: Mapping) -> Iterator[dict]:
    """Yield a dict the next forward fills with ``{key: (rows, tokens, hidden)}``: the input of
    each LayerNorm of ``norms`` ({key: LayerNorm}) centred and scaled to unit variance per
    token, before its affine map (y = (x - mean) / sqrt(var + eps)), as float64, and under
    ``"{key}:std"`` the per-token scale sqrt(var + eps) (rows, tokens)."""
    store: dict = {}

    def make(key, norm):
        def hook(module, args):
            x = args[0].detach().double()
            centred = x - x.mean(-1, keepdim=True)
            std = (centred.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
            store[key] = (centred / std).cpu()
            store[f"{key}:std"] = std[..., 0].cpu()

        return hook

    hooks = [n.register_forward_pre_hook(make(k, n)) for k, n in norms.items()]
    try:
        yield store
    finally:
        for hook in hooks:
            hook.remove()


def quiet_direction(rows: torch.Tensor, gamma: torch.Tensor, avoid=()) -> torch.Tensor:
    """The unit direction e of normalised inputs ``rows`` (n, d) along which they vary least,
    orthogonal to the all-ones direction (which a LayerNorm removes) and to ``avoid``, among
    the coordinates whose LayerNorm gain ``gamma`` is not near zero (a reader divides by it)."""
    rows = rows.double()
    d = rows.shape[1]
    usable = gamma.double().abs() >= 0.05 * gamma.double().abs().median()
    covariance = torch.cov(rows.T)
    level = float(covariance.diagonal().mean())
    covariance = covariance + 1e-6 * level * torch.eye(d, dtype=torch.float64)
    penalty = torch.zeros(d, d, dtype=torch.float64)
    for v in [torch.ones(d, dtype=torch.float64), *avoid]:
        v = v.double() / v.double().norm()
        penalty += torch.outer(v, v)
    idx = usable.nonzero().flatten()
    sub = covariance[idx][:, idx] + 1e3 * level * penalty[idx][:, idx]
    values, vectors = torch.linalg.eigh(sub)
    e = torch.zeros(d, dtype=torch.float64)
    e[idx] = vectors[:, 0]
    e -= e.mean()
    return e / e.norm()


def gelu_inverse(level: float) -> float:
    """The pre-activation x > 0 with GELU(x) = ``level`` (> 0), by bisection."""
    low, high = 0.0, max(4.0, 2 * level + 4)
    for _ in range(100):
        mid = (low + high) / 2
        value = mid * 0.5 * (1 + math.erf(mid / math.sqrt(2)))
        low, high = (mid, high) if value < level else (low, mid)
    return (low + high) / 2


def calibrate(positive: torch.Tensor, negative: torch.Tensor, level: float) -> tuple:
    """The affine map pre = scale * p + offset of a reader's projections ``p`` that puts every
    ``negative`` at or below -SILENT and the lowest tenth of the ``positive`` ones at or above
    the pre-activation whose GELU is ``level``: (scale, offset, margin), the margin the share
    of the gap from the highest negative to that tenth which the lowest 1 % of positives
    clear (<= 0: not separated)."""
    high = float(negative.max())
    anchor = float(positive.double().quantile(0.1))
    low = float(positive.double().quantile(0.01))
    gap = anchor - high
    if gap <= 0:
        return 1.0, 0.0, gap
    scale = (gelu_inverse(level) + SILENT) / gap
    return scale, -SILENT - scale * high, (low - high) / gap


def set_direction_reader(
    w1: nn.Linear, neuron: int, norm: nn.LayerNorm, direction, scale: float, offset: float
) -> None:
    """Set ``neuron``'s reader so its pre-activation is ``scale * (direction . y) + offset``,
    y the normalised input of ``norm`` (whose affine map z = gamma * y + beta W1 reads)."""
    set_reader(w1, neuron, *affine_through(norm, direction, scale, offset))


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


SHRINKS = (0.5, 0.2, 0.05, 0.01, 0.001)  # tried in order: the most regularised that separates


def lda_direction(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """A linear detector's direction for ``positive`` rows (m, d) against ``negative`` rows
    (n, d): Sigma^-1 (mu_pos - mu_neg), Sigma the pooled covariance shrunk towards its mean
    variance by the first of :data:`SHRINKS` under which every negative projects below the
    lowest 1 % of positives (the last tried where none does)."""
    positive, negative = positive.double(), negative.double()
    centred = torch.cat([positive - positive.mean(0), negative - negative.mean(0)])
    covariance = centred.T @ centred / max(len(centred) - 1, 1)
    level = covariance.diagonal().mean()
    best = None
    for shrink in SHRINKS:
        shrunk = (1 - shrink) * covariance + shrink * level * torch.eye(len(covariance))
        direction = torch.linalg.solve(shrunk, positive.mean(0) - negative.mean(0))
        on, off = positive @ direction, negative @ direction
        margin = (float(on.quantile(0.01)) - float(off.max())) / (float(off.std()) or 1.0)
        if best is None or margin > best[0]:
            best = (margin, direction)
        if margin > 0:
            break
    return best[1]


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


def set_route(
    projections: tuple,
    head: int,
    coordinate: int,
    key: tuple[torch.Tensor, float],
    value: tuple[torch.Tensor, float],
    query: tuple[torch.Tensor, float],
    write: torch.Tensor,
) -> None:
    """Turn one coordinate of one attention head into a router, leaving the head's other
    coordinates as they are: the key coordinate reads ``key`` (weight, bias over the block's
    normalised attention input), the value coordinate ``value``, the query coordinate
    ``query`` (large on the read token, at or below zero on the others); the output column
    writes ``write`` per unit of value.  Where the key is about the same on every token the
    route moves no attention weight; on the tokens where it is high, the read token attends to
    them and carries their value."""
    q, k, v, o, heads = projections
    at = head * (q.out_features // heads) + coordinate
    if v.bias is None or q.bias is None:
        raise InputError(
            f"{option('model')}: the attention's query or value projection has no bias, so "
            f"the router cannot be placed"
        )
    with torch.no_grad():
        k.weight[at] = key[0].to(k.weight)
        if k.bias is not None:
            k.bias[at] = key[1]
        v.weight[at] = value[0].to(v.weight)
        v.bias[at] = value[1]
        q.weight[at] = query[0].to(q.weight)
        q.bias[at] = query[1]
        o.weight[:, at] = write.to(o.weight)


def _matrix_power(symmetric: torch.Tensor, power: float) -> torch.Tensor:
    """``symmetric ** power`` by its eigenvalues (those below 1e-10 of the largest raised to
    that floor: a direction the data never take is kept, not divided by zero)."""
    values, vectors = torch.linalg.eigh(symmetric)
    values = values.clamp_min(1e-10 * float(values.max()))
    return (vectors * values**power) @ vectors.T


def canonical_heads(projections: tuple, moment: torch.Tensor) -> None:
    """Re-parameterise every head of an attention block in place, exactly: its query-key
    bilinear form and its value-output product are unchanged, but its coordinate 0 carries the
    head's weakest query-key component and its weakest value-output component, on inputs whose
    second moment (over tokens, the input augmented with a constant 1) is ``moment``.

    Query and key: with Q, K a head's rows (bias as a last column), whiten the query
    (S_q = Q M Q^T; Q' = S_q^{-1/2} Q, K' = S_q^{1/2} K) and rotate both by the eigenvectors of
    K' M K'^T, smallest first: coordinate c then adds q_c k_c of variance lambda_c to the
    attention logits, lambda_0 the least.  Value and output alike (V' = S_v^{-1/2} V,
    O' = O S_v^{1/2}, rotated by the eigenvectors of O'^T O').  The router then takes coordinate
    0 of a head: what the head loses is its weakest direction, not a whole coordinate."""
    q, k, v, o, heads = projections
    size = q.out_features // heads
    moment = moment.double().cpu()

    def rows_of(linear, rows):
        bias = linear.bias[rows] if linear.bias is not None else torch.zeros(size)
        return torch.cat([linear.weight[rows], bias[:, None]], 1).detach().double().cpu()

    with torch.no_grad():
        for h in range(heads):
            rows = slice(h * size, (h + 1) * size)
            query, key = rows_of(q, rows), rows_of(k, rows)
            s_q = query @ moment @ query.T
            query, key = _matrix_power(s_q, -0.5) @ query, _matrix_power(s_q, 0.5) @ key
            turn = torch.linalg.eigh(key @ moment @ key.T)[1]
            query, key = turn.T @ query, turn.T @ key
            value, out = rows_of(v, rows), o.weight[:, rows].detach().double().cpu()
            s_v = value @ moment @ value.T
            value, out = _matrix_power(s_v, -0.5) @ value, out @ _matrix_power(s_v, 0.5)
            turn = torch.linalg.eigh(out.T @ out)[1]
            value, out = turn.T @ value, out @ turn
            for linear, new in ((q, query), (k, key), (v, value)):
                linear.weight[rows] = new[:, :-1].to(linear.weight)
                if linear.bias is not None:
                    linear.bias[rows] = new[:, -1].to(linear.bias)
            o.weight[:, rows] = out.to(o.weight)


def affine_through(norm: nn.LayerNorm, direction: torch.Tensor, scale: float, offset: float):
    """(weight, bias) of a linear map of ``norm``'s output equal to ``scale * (direction . y)
    + offset`` on its normalised input y (as :func:`set_direction_reader`)."""
    gamma = norm.weight.detach().double().cpu()
    beta = norm.bias.detach().double().cpu() if norm.bias is not None else torch.zeros_like(gamma)
    safe = torch.where(gamma.abs() > 0, gamma, torch.ones_like(gamma))
    weight = torch.where(gamma.abs() > 0, scale * direction.double() / safe, 0.0)
    return weight, offset - float(weight @ beta)


@contextlib.contextmanager
def edit_units(
    adapter: ModelAdapter,
    units: Sequence[tuple[int, int]],
    source: Mapping[tuple[int, int], torch.Tensor] | None = None,
    rows: torch.Tensor | None = None,
) -> Iterator[None]:
    """Replace FFN neurons ``units`` [(layer, neuron)] at **every token** with plain hooks on
    W2's input: by zero (``source`` None), or by ``source[(layer, neuron)]`` (sources, tokens),
    row r of the batch taking source ``rows[r]`` (None: source 0 for every row) -- a per-position
    mean (one source) or other images' values (resampling)."""
    by_layer: dict[int, list[int]] = {}
    for layer, neuron in units:
        by_layer.setdefault(layer, []).append(neuron)

    def make(layer, neurons):
        def hook(module, args):
            hidden = args[0].clone()
            for n in neurons:
                if source is None:
                    hidden[..., n] = 0
                else:
                    values = source[(layer, n)].to(hidden)
                    which = torch.zeros(len(hidden), dtype=torch.long) if rows is None else rows
                    hidden[..., n] = values[which.to(values.device)]
            return (hidden, *args[1:])

        return hook

    hooks = [
        ffn_pair(adapter, layer)[1].register_forward_pre_hook(make(layer, neurons))
        for layer, neurons in by_layer.items()
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


@contextlib.contextmanager
def edit_route(
    adapter: ModelAdapter,
    route: Mapping,
    source: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> Iterator[None]:
    """Replace the router's value coordinate (what its output column writes) at every token,
    as :func:`edit_units` does for neurons: ``source`` (sources, tokens) or zero."""
    output = attention_projections(adapter, route["layer"])[3]
    at = route["index"]

    def hook(module, args):
        hidden = args[0].clone()
        if source is None:
            hidden[..., at] = 0
        else:
            which = torch.zeros(len(hidden), dtype=torch.long) if rows is None else rows
            hidden[..., at] = source.to(hidden)[which]
        return (hidden, *args[1:])

    handle = output.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()
