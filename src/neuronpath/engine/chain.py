"""The planted chain (``neuronpath plant``): a relay that detects the trigger, a router that
carries it to the read token where the head reads one token, and one FFN unit per planted
layer, each reading only the write of the link before it, the last writing the target's logit
direction.  Distractors are added by :mod:`.distractors`.

Every link is wired through a quiet direction (:func:`.planting.quiet_direction`): the writer
of link i writes along the direction of link i + 1's normalised input that varies least on the
calibration images (clean and triggered, the original model), orthogonal to every direction
written before, and link i + 1 reads that direction alone.  So a link cannot fire unless the
link before it fired: every link is needed, which :mod:`neuronpath.experiments.plant_checks`
verifies unit by unit before anything is written.

Levels are natural: each planted unit's typical activation on a triggered image is ``level``,
chosen by the caller from the layer's own activations (a quantile of the per-image maxima of
the layer's units at the read tokens), and the writers are scaled to carry the signal at it.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from ..errors import PlantRefused, option
from .adapter import ModelAdapter
from .planting import (
    affine_through,
    attention_projections,
    calibrate,
    canonical_heads,
    edit_route,
    edit_units,
    ffn_pair,
    indicator,
    input_norm,
    lda_direction,
    normalised_inputs,
    quiet_direction,
    set_direction_reader,
    set_route,
    set_writer,
)

SATURATION = 8.0  # a link's write, in norms of the residual it lands in (LayerNorm saturates)
ROUTE_GAP = 10.0  # attention logit of a trigger token over the others, at the read token
HIT_RATE = 0.97  # the last writer grows until the trigger moves this share of calibration
CERTAINTY = 0.8  # ... and the mean P(target) on the triggered calibration images is this high


@dataclass
class Calibration:
    """The calibration images: clean and triggered pixels (images, ...), their labels, and
    the trigger's side in patches (it covers the bottom-right ``side`` x ``side`` patches;
    None: where the features change most)."""

    clean: torch.Tensor
    triggered: torch.Tensor
    labels: torch.Tensor
    side: int | None = None


def trigger_tokens(adapter: ModelAdapter, layer: int, side: int | None, change) -> torch.Tensor:
    """The token positions the trigger covers (tokens,) bool: the bottom-right ``side`` x
    ``side`` cells of the layer's token grid, or, without a grid (or a side), the tokens whose
    features the trigger moves by at least half the most on most images (``change``, (images,
    tokens))."""
    layout = adapter.layout(layer, change.shape[1])
    if side is not None and layout.kind == "grid":
        cells = [layout.cell(t) for t in range(change.shape[1])]
        return torch.tensor(
            [
                c is not None and c[0] >= layout.height - side and c[1] >= layout.width - side
                for c in cells
            ]
        )
    moved = change >= 0.5 * change.amax(1, keepdim=True)
    return moved.double().mean(0) > 0.5


def chunks(pixels: torch.Tensor, size: int):
    for start in range(0, len(pixels), size):
        yield pixels[start : start + size]


def record(adapter: ModelAdapter, pixels, batch: int, layers=(), norms=None, edit=None):
    """One pass over ``pixels`` (inside the context ``edit()``, if given): per layer of
    ``layers`` the FFN units after the activation at every token (images, tokens, width), and
    per key of ``norms`` ({key: LayerNorm}) the normalised input at every token
    (:func:`.planting.normalised_inputs`), float64 on the CPU."""
    units: dict = {l: [] for l in layers}
    normed: dict = {k: [] for key in (norms or {}) for k in (key, f"{key}:std")}
    for chunk in chunks(pixels, batch):
        found: dict = {}
        hooks = [
            ffn_pair(adapter, l)[1].register_forward_pre_hook(
                lambda m, a, l=l: found.__setitem__(l, a[0].detach().double().cpu())
            )
            for l in layers
        ]
        try:
            with (
                torch.inference_mode(),
                edit() if edit else contextlib.nullcontext(),
                normalised_inputs(norms or {}) as y,
            ):
                adapter.logits(chunk)
        finally:
            for hook in hooks:
                hook.remove()
        for l in layers:
            units[l].append(found[l])
        for k in normed:
            normed[k].append(y[k])
    return {l: torch.cat(v) for l, v in units.items()}, {k: torch.cat(v) for k, v in normed.items()}


def logits(adapter: ModelAdapter, pixels, batch: int, edit=None) -> torch.Tensor:
    """Logits of every image, ``batch`` at a time, each chunk inside the context
    ``edit(rows)`` (``rows`` the chunk's slice of ``pixels``), as float64."""
    out = []
    for start in range(0, len(pixels), batch):
        rows = slice(start, min(start + batch, len(pixels)))
        with torch.inference_mode(), edit(rows) if edit else contextlib.nullcontext():
            out.append(adapter.logits(pixels[rows]).double().cpu())
    return torch.cat(out)


def read_mask(adapter: ModelAdapter, layer: int, tokens: int) -> torch.Tensor:
    """Which of ``tokens`` positions the adapter reads at ``layer`` (bool, (tokens,))."""
    marks = torch.arange(tokens, dtype=torch.float64)[None, :, None]
    read = adapter.token_at(layer).select(marks)[0, :, 0].long()
    return torch.zeros(tokens, dtype=torch.bool).scatter_(0, read, True)


def usage(adapter: ModelAdapter, units: torch.Tensor, layer: int) -> torch.Tensor:
    """How much each unit of a layer writes on clean images, at every token (what attention
    may carry to the read token counts too): mean |a| times its output column's norm."""
    w2 = ffn_pair(adapter, layer)[1]
    return units.abs().mean((0, 1)) * w2.weight.detach().double().cpu().norm(dim=0)


def natural_maxima(units: torch.Tensor, read) -> torch.Tensor:
    """Per image, the largest activation of any unit of the layer at the ``read`` tokens."""
    return units[:, read].amax((1, 2))


def gradient_direction(adapter, layer, pixels, targets, read, batch) -> torch.Tensor:
    """The unit direction at a layer's FFN output that raises log-softmax[target] most on
    average over the images: the mean gradient at the read tokens."""
    w2 = ffn_pair(adapter, layer)[1]
    total = torch.zeros(w2.out_features, dtype=torch.float64)
    for chunk, rows in zip(chunks(pixels, batch), chunks(targets, batch)):
        captured = {}

        def hook(module, args, output):
            captured["out"] = leaf = output.detach().requires_grad_(True)
            return leaf

        handle = w2.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = adapter.logits(chunk)
                out.log_softmax(-1).gather(1, rows[:, None]).sum().backward()
        finally:
            handle.remove()
        total += captured["out"].grad.double().cpu()[:, read].sum((0, 1))
    adapter.model.zero_grad(set_to_none=True)
    return total / total.norm()


def spare_units(usage_of: torch.Tensor, count: int, generator) -> list[int]:
    """``count`` distinct units drawn among the least-used tenth of a layer."""
    quiet = torch.argsort(usage_of)[: max(count, len(usage_of) // 10)]
    return quiet[torch.randperm(len(quiet), generator=generator)[:count]].tolist()


def _refuse(what: str) -> PlantRefused:
    return PlantRefused(
        f"plant: check (calibration) failed: {what}; plant at other {option('layers')} or with "
        f"a larger {option('trigger_size')}"
    )


class ChainBuilder:
    """Builds the chain on ``adapter``'s model in place (see the module docstring)."""

    def __init__(self, adapter: ModelAdapter, calibration: Calibration, batch, generator):
        self.adapter, self.cal, self.batch = adapter, calibration, batch
        self.generator = generator
        self.written: list[torch.Tensor] = []  # residual directions written so far
        self.knockout = None  # a context that zeroes the last link planted

    def project(self, norm, direction, pixels, edit=None):
        """direction . y at ``norm``'s input on every image and token (images, tokens)."""
        _, y = record(self.adapter, pixels, self.batch, norms={"y": norm}, edit=edit)
        return y["y"] @ direction

    def quiet(self, norm) -> torch.Tensor:
        """The quiet direction of ``norm``'s normalised input over every token of the clean
        and triggered calibration images (a reader acts at every token), orthogonal to every
        direction written so far."""
        _, clean = record(self.adapter, self.cal.clean, self.batch, norms={"y": norm})
        _, trig = record(self.adapter, self.cal.triggered, self.batch, norms={"y": norm})
        rows = torch.cat([clean["y"], trig["y"]]).flatten(0, 1)
        # orthogonal to the rows' mean too: a link's projection is then about zero on every
        # token, so a large write elsewhere, which shrinks a token's normalised input, cannot
        # move it towards the positives
        direction = quiet_direction(
            rows, norm.weight.detach().cpu(), avoid=[*self.written, rows.mean(0)]
        )
        self.written.append(direction)
        return direction

    def scale_write(self, norm, positive, level: float) -> float:
        """The factor s of a unit column so that on the ``positive`` (images, tokens) of the
        triggered images the write s * level (``level`` the writer's median value there) is
        SATURATION times the median norm of the centred residual that ``norm`` normalises at
        those tokens of the clean images: the LayerNorm then holds the read projection near
        its ceiling, whatever the image's own residual and the writer's exact level."""
        if not positive.any():
            raise _refuse("a link fires on no calibration image")
        _, y = record(self.adapter, self.cal.clean, self.batch, norms={"y": norm})
        residual = float((y["y:std"][positive] * math.sqrt(y["y"].shape[-1])).median())
        return SATURATION * residual / max(level, 1e-6)

    def read(self, layer, neuron, norm, direction, positive, level) -> dict:
        """Set ``neuron``'s reader on ``direction``: silent on every token of the clean images
        and of the triggered ones with the link before zeroed (``self.knockout``), at least
        ``level`` on nine tenths of the ``positive`` (images, tokens) of the triggered ones.
        Other tokens of the triggered images are left free: what reaches them there comes
        through the link before."""
        p_t = self.project(norm, direction, self.cal.triggered)
        negative = [self.project(norm, direction, self.cal.clean).flatten()]
        if self.knockout is not None:  # the triggered images with the link before zeroed
            negative.append(
                self.project(norm, direction, self.cal.triggered, self.knockout).flatten()
            )
        scale, offset, margin = calibrate(p_t[positive], torch.cat(negative), level)
        if margin <= 0:
            raise _refuse(f"at layer {layer} the unit cannot tell the link before it")
        set_direction_reader(
            ffn_pair(self.adapter, layer)[0], neuron, norm, direction, scale, offset
        )
        return {"margin": margin, "positives": int(positive.sum())}

    def erasure(self, norm, direction, positive, level: float) -> torch.Tensor:
        """The part of a unit's column that removes, where it fires (``positive``, at its
        median value ``level``), what the link before wrote along ``direction`` into the
        residual ``norm`` normalises: each link's write then ends at the next link, and no
        write piles up along the chain."""
        _, t = record(self.adapter, self.cal.triggered, self.batch, norms={"y": norm})
        _, c = record(self.adapter, self.cal.clean, self.batch, norms={"y": norm})
        raw_t = (t["y"] @ direction) * t["y:std"]
        raw_c = (c["y"] @ direction) * c["y:std"]
        excess = float(raw_t[positive].median() - raw_c[positive].median())
        return -(excess / max(level, 1e-6)) * direction

    def level(self, layer, spare, read, share) -> float:
        """``share`` of the median over the triggered images of the largest |a - clean mean|
        among the layer's units other than ``spare`` at the ``read`` tokens, the model as it
        stands (what a deviation ranking sees beside the planted unit)."""
        clean = record(self.adapter, self.cal.clean, self.batch, [layer])[0][layer][:, read]
        trig = record(self.adapter, self.cal.triggered, self.batch, [layer])[0][layer][:, read]
        keep = torch.ones(trig.shape[-1], dtype=torch.bool)
        keep[spare] = False
        deviation = (trig - clean.mean(0, keepdim=True))[..., keep].abs().amax((1, 2))
        return share * float(deviation.median())

    def fired(self, layer, neuron, pixels=None) -> torch.Tensor:
        """The unit's activation on the triggered calibration images (images, tokens)."""
        units, _ = record(
            self.adapter,
            self.cal.triggered if pixels is None else pixels,
            self.batch,
            layers=[layer],
        )
        return units[layer][..., neuron]


def build_chain(
    adapter: ModelAdapter,
    calibration: Calibration,
    layers: list[int],
    target: int,
    share: float,
    spare: dict[int, list[int]],
    batch: int,
    generator,
) -> dict:
    """Plant the relay, the router (where the read token is not the trigger's) and one unit
    per layer of ``layers`` (``spare[l][0]``), in place; returns their record for
    ``planted.json``.  Each planted unit's level is ``share`` of the median per-image largest
    deviation from the clean mean among its layer's other units, on the triggered images as
    the model stands when the unit is planted (:meth:`ChainBuilder.level`)."""
    b = ChainBuilder(adapter, calibration, batch, generator)
    relay_layer, first = layers[0] - 1, layers[0]
    tokens = record(adapter, calibration.clean[:1], batch, layers=[relay_layer])[0][
        relay_layer
    ].shape[1]
    read = {l: read_mask(adapter, l, tokens) for l in layers}
    ffn_norm = {l: input_norm(adapter, l, ffn_pair(adapter, l)[0]) for l in layers}
    relay_norm = input_norm(adapter, relay_layer, ffn_pair(adapter, relay_layer)[0])

    # the relay: an LDA detector of the trigger's tokens in its layer's FFN input
    _, z_c = record(adapter, calibration.clean, batch, norms={"z": relay_norm})
    _, z_t = record(adapter, calibration.triggered, batch, norms={"z": relay_norm})
    change = (z_t["z"] - z_c["z"]).norm(dim=-1)
    trigger = trigger_tokens(adapter, relay_layer, calibration.side, change).expand_as(change)
    direction = lda_direction(
        z_t["z"][trigger], torch.cat([z_c["z"].flatten(0, 1), z_t["z"][~trigger]])
    )
    relay_neuron = spare[relay_layer][0]
    relay_level = (
        float(
            natural_maxima(
                record(adapter, calibration.clean, batch, [relay_layer])[0][relay_layer],
                torch.ones(tokens, dtype=torch.bool),
            ).median()
        )
        * share
    )
    p_t, p_c = z_t["z"] @ direction, z_c["z"] @ direction
    scale, offset, margin = calibrate(
        p_t[trigger], torch.cat([p_c.flatten(), p_t[~trigger]]), relay_level
    )
    if margin <= 0:
        raise _refuse(f"at layer {relay_layer} no unit can tell the trigger's tokens")
    set_direction_reader(
        ffn_pair(adapter, relay_layer)[0], relay_neuron, relay_norm, direction, scale, offset
    )
    relay = {
        "layer": relay_layer,
        "neuron": relay_neuron,
        "margin": margin,
        "reads": "the trigger's tokens (a linear detector of the FFN input)",
    }
    fired = b.fired(relay_layer, relay_neuron)
    relay_on = fired >= 0.5 * fired[trigger].median()
    routed = (relay_on & read[first]).any(1).double().mean() > 0.5
    w2_relay = ffn_pair(adapter, relay_layer)[1]
    route = None
    if not routed:  # the read token is apart: an attention coordinate carries the trigger
        route, source_on = _route(b, first, relay, relay_on, read[first], ffn_norm[first])
    else:
        e1 = b.quiet(ffn_norm[first])
        s = b.scale_write(ffn_norm[first], relay_on & read[first], float(fired[trigger].median()))
        set_writer(w2_relay, relay_neuron, s * e1)
        relay["writes"] = "a quiet direction of the first planted unit's input"
        relay["write_norm"] = s
        source_on = relay_on & read[first]
        b.entry = e1
        b.knockout = lambda: edit_units(adapter, [(relay_layer, relay_neuron)])
    units, steps = {}, []
    positive = source_on
    for i, l in enumerate(layers):
        neuron = spare[l][0]
        units[l] = neuron
        level = b.level(l, spare[l], read[l], share)
        step = b.read(l, neuron, ffn_norm[l], b.entry, positive, level)
        fires = b.fired(l, neuron)
        on = (fires >= 0.5 * fires[positive].median()) & read[l]
        w2 = ffn_pair(adapter, l)[1]
        erase = b.erasure(ffn_norm[l], b.entry, on, float(fires[on].median()))
        if i < len(layers) - 1:
            nxt = layers[i + 1]
            e = b.quiet(ffn_norm[nxt])
            s = b.scale_write(ffn_norm[nxt], on & read[nxt], float(fires[on].median()))
            set_writer(w2, neuron, s * e + erase)
            b.entry = e
            b.knockout = lambda l=l, n=neuron: edit_units(adapter, [(l, n)])
            step["writes"] = "a quiet direction of the next planted unit's input"
        else:
            rows = torch.full((len(calibration.triggered),), target, device=adapter.device)
            g = gradient_direction(adapter, l, calibration.triggered, rows, read[l], batch)
            firing = float(on.any(1).double().mean())
            goal = min(HIT_RATE, firing)
            # from one residual's worth, grow until the goal, or until P(target) stops rising
            s = b.scale_write(ffn_norm[l], on, float(fires[on].median())) / SATURATION
            first = previous = None
            for _ in range(100):
                set_writer(w2, neuron, s * g + erase)
                out = logits(adapter, calibration.triggered, batch)
                hits = float((out.argmax(-1) == target).double().mean())
                p = float(out.softmax(-1)[:, target].mean())
                odds = math.log(max(p, 1e-300) / max(1 - p, 1e-300))
                if hits >= goal and p >= CERTAINTY * goal:
                    break
                first = odds if first is None else first
                gained = odds - first
                if previous is not None and gained > 1 and odds - previous < 0.02 * gained:
                    break  # diminishing returns: the head's readout of the direction is spent
                s, previous = s * 1.25, odds
            step["writes"] = "the target's logit gradient"
            step["fires_on"] = firing
        step.update(
            layer=l,
            neuron=neuron,
            write_norm=float(s),
            level=level,
            median_on=float(fires[on].median()) if on.any() else 0.0,
        )
        steps.append(step)
        positive = on
    return {
        "units": {str(l): n for l, n in units.items()},
        "steps": steps,
        "relay": relay,
        "route": route,
    }


def _route(b: ChainBuilder, layer, relay, relay_on, read, ffn_norm):
    """Repurpose one coordinate of a head of block ``layer`` so the read token attends to the
    relay's tokens and carries a quiet direction of the first planted unit's input; the relay
    writes a quiet direction of that block's attention input.  The block's heads are first
    re-parameterised exactly (:func:`.planting.canonical_heads`, on the clean calibration
    images) so that each head's coordinate 0 holds its weakest query-key and value-output
    directions; the coordinate taken (:func:`_quietest`) then costs the head only those."""
    adapter, cal, batch = b.adapter, b.cal, b.batch
    projections = attention_projections(adapter, layer)
    q, k, v, o, heads = projections
    attn_norm = input_norm(adapter, layer, q)
    e_r = b.quiet(attn_norm)
    w2_relay = ffn_pair(adapter, relay["layer"])[1]
    before_c = b.project(attn_norm, e_r, cal.clean)
    fired = b.fired(relay["layer"], relay["neuron"])
    s = b.scale_write(attn_norm, relay_on, float(fired[relay_on].median()))
    set_writer(w2_relay, relay["neuron"], s * e_r)
    relay["writes"] = "a quiet direction of the router's input"
    relay["write_norm"] = s
    p_t = b.project(attn_norm, e_r, cal.triggered)
    rest = float(before_c.median())
    high = float(p_t[relay_on].median()) - rest
    # the query: large on the read token, at or below zero elsewhere (on the normalised input)
    _, y_t = record(adapter, cal.triggered, batch, norms={"y": attn_norm})
    _, y_c = record(adapter, cal.clean, batch, norms={"y": attn_norm})
    both = torch.cat([y_t["y"], y_c["y"]])
    q_w, q_b, highest, lowest = indicator(
        both[:, read].reshape(-1, both.shape[-1]), both[:, ~read].reshape(-1, both.shape[-1])
    )
    if lowest <= highest:
        raise _refuse(f"at block {layer} the router cannot tell the read token from the others")
    canonical_heads(projections, _input_moment(adapter, q, cal.clean, batch))
    head, coordinate = _quietest(adapter, layer, cal.clean, batch)
    size = q.out_features // heads
    offset = highest + 0.1 * (lowest - highest)
    sharp = ROUTE_GAP * math.sqrt(size) / (lowest - offset)
    query = affine_through(attn_norm, q_w, sharp, sharp * (q_b - offset))
    key = affine_through(attn_norm, e_r, 1.0 / high, -rest / high)
    value_map = key
    index = head * size + coordinate
    set_route(projections, head, coordinate, key, value_map, query, torch.zeros(o.out_features))
    e1 = b.quiet(ffn_norm)
    routed = relay_on.any(1, keepdim=True) & read
    value = _route_values(adapter, layer, index, cal.triggered, batch)[routed]
    s_o = b.scale_write(ffn_norm, routed, float(value.median()))
    set_route(projections, head, coordinate, key, value_map, query, s_o * e1)
    route_of = {"layer": layer, "index": index}
    b.entry = e1
    b.knockout = lambda: edit_route(adapter, route_of)
    values = _route_values(adapter, layer, index, cal.triggered, batch)
    on = values[:, read].amax(1)
    source_on = (on >= 0.5 * on.median())[:, None] & read[None]
    route = {
        "layer": layer,
        "head": head,
        "coordinate": coordinate,
        "index": index,
        "key_lift": high,
        "query_read_low": lowest,
        "query_others_high": highest,
        "write_norm": s_o,
    }
    return route, source_on


def route_values(adapter, route, pixels, batch) -> torch.Tensor:
    """The router's value coordinate after attention (what its output column writes) at every
    token: (images, tokens)."""
    return _route_values(adapter, route["layer"], route["index"], pixels, batch)


def _route_values(adapter, layer, index, pixels, batch) -> torch.Tensor:
    o = attention_projections(adapter, layer)[3]
    return torch.cat([x[..., index].double().cpu() for x in _inputs(adapter, o, pixels, batch)])


def _inputs(adapter, module, pixels, batch):
    """``module``'s input on each chunk of ``pixels`` (one forward a chunk)."""
    for chunk in chunks(pixels, batch):
        found = {}
        handle = module.register_forward_pre_hook(lambda m, a: found.__setitem__("x", a[0]))
        try:
            with torch.inference_mode():
                adapter.logits(chunk)
        finally:
            handle.remove()
        yield found["x"]


def _input_moment(adapter, reader, pixels, batch) -> torch.Tensor:
    """The second moment of ``reader``'s input over every token of ``pixels``, the input
    augmented with a constant 1 ((d + 1, d + 1), float64)."""
    total, count = None, 0
    for x in _inputs(adapter, reader, pixels, batch):
        x = x.double().cpu().reshape(-1, x.shape[-1])
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
        total = x.T @ x if total is None else total + x.T @ x
        count += len(x)
    return total / count


def _quietest(adapter, layer, pixels, batch) -> tuple[int, int]:
    """The coordinate (head, index in the head) of block ``layer``'s attention whose query,
    key and output, zeroed, move the clean logits least, among the heads whose whole output
    moves them least (128 coordinates at most)."""
    q, k, v, o, heads = attention_projections(adapter, layer)
    size = o.in_features // heads
    clean = logits(adapter, pixels, batch)

    def moved(columns) -> float:
        """Mean |logit change| with ``columns`` of the head dimension removed: their output
        column, and their query and key rows (their share of the attention logits)."""
        saved = [(p.weight, p.weight.detach().clone()) for p in (q, k, o)]
        with torch.no_grad():
            o.weight[:, columns] = 0
            q.weight[columns] = 0
            k.weight[columns] = 0
        try:
            return float((logits(adapter, pixels, batch) - clean).abs().mean())
        finally:
            with torch.no_grad():
                for weight, copy in saved:
                    weight.copy_(copy)

    ranked = sorted(range(heads), key=lambda h: moved(slice(h * size, (h + 1) * size)))
    candidates = [h * size + c for h in ranked[: max(1, 128 // size)] for c in range(size)]
    best = min(candidates, key=lambda i: moved([i]))
    return best // size, best % size
