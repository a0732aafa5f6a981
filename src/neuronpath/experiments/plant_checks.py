"""The verification ``neuronpath plant`` runs on held-out images before it writes anything:
every check is measured with plain hooks on the planted model (:func:`..engine.planting.
edit_units`, at every token), recorded in ``planted.json`` with its value and threshold, and a
plant any of whose checks fails is refused.

Ablations: **zero**; **mean** -- each unit's per-position mean over the clean held-out images;
**resample** -- each triggered image takes the unit's values on another clean held-out image
(a seeded derangement).  The trigger's effect is mean P(target | triggered) - mean P(target |
clean); a *removal* is the share of it an ablation takes away.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from ..draws import seeded_generator
from ..engine.ablation import ABLATIONS
from ..engine.chain import logits, read_mask, record, route_values
from ..engine.planting import edit_route, edit_units, ffn_pair

THRESHOLDS = {
    "a": 0.90,  # triggered images predicted as the target, at least
    "b": 0.90,  # removal by ablating the whole chain (each ablation), at least
    "links": 0.90,  # removal by ablating each link alone (each ablation), at least
    "c": 0.10,  # removal by a random set of the same layers at the nearest levels, at most
    "distractors": 0.02,  # |removal| by a distractor, alone or beside the path, at most
    "e": 1.0,  # clean top-1 change, at most (points)
    "same": 0.99,  # clean predictions unchanged, at least
    "levels": 1.0,  # planted level (95th percentile) over the layer's natural 99th, at most
}
NAMES = {
    "a": "triggered images predicted as the target",
    "b": "share of the trigger's effect on P(target) removed by ablating the whole chain",
    "links": "share removed by ablating each link of the chain alone (the smallest)",
    "c": "share removed by a random set of the same layers at the nearest activation levels",
    "distractors": "largest |share| moved by a distractor, alone or beside the path",
    "e": "clean top-1 change from the original model (points)",
    "same": "clean held-out predictions unchanged",
    "levels": "planted activation (95th percentile) over the layer's natural 99th percentile",
}


def clean_shift(before: torch.Tensor, after: torch.Tensor) -> dict:
    """Why clean predictions move, where they do: the original model's margin (top logit over
    the runner-up) of the images whose prediction changed, beside the margins of all, and how
    far the surgery moved the clean logits (largest change per image) -- so a refusal says
    whether near-ties or large shifts are to blame."""
    top = before.topk(2, dim=-1).values
    margin = top[:, 0] - top[:, 1]
    moved = before.argmax(-1) != after.argmax(-1)
    shift = (after - before).abs().amax(-1)

    def quantiles(x):
        q = torch.tensor([0.05, 0.5, 0.95], dtype=x.dtype)
        return [round(float(v), 4) for v in x.quantile(q)] if len(x) else []

    return {
        "moved": int(moved.sum()),
        "moved_margins": [round(float(m), 4) for m in margin[moved]],
        "margin_p5_p50_p95": quantiles(margin),
        "logit_shift_p5_p50_p95": quantiles(shift),
        "moved_logit_shift": [round(float(m), 4) for m in shift[moved]],
    }


def refusal_detail(key: str, check: dict) -> str:
    """What a refusal by check ``key`` adds to its one line (empty for most checks; for (same),
    the figures :func:`clean_shift` recorded)."""
    if key != "same":
        return ""
    return (
        f" -- {check['moved']} moved; their original margins (top logit over the runner-up) "
        f"{check['moved_margins']}, all images' 5/50/95th percentiles "
        f"{check['margin_p5_p50_p95']}; the surgery moved their clean logits by "
        f"{check['moved_logit_shift']}"
    )


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of range(n) with no fixed point (n >= 2)."""
    order = torch.randperm(n, generator=seeded_generator("plant-resample", seed))
    return order.roll(1)[torch.argsort(order)] if n > 1 else order


class Verifier:
    """The planted model's behaviour on the held-out images under ablations."""

    def __init__(self, adapter, held, target: int, batch: int, seed: int, layers, route=None):
        self.adapter, self.held, self.target, self.batch = adapter, held, target, batch
        self.layers = sorted(set(layers))
        self.base = logits(adapter, held.triggered, batch)
        self.clean = logits(adapter, held.clean, batch)
        self.p_t = float(self.base.softmax(-1)[:, target].mean())
        self.effect = self.p_t - float(self.clean.softmax(-1)[:, target].mean())
        self.values = record(adapter, held.clean, batch, layers=self.layers)[0]
        self.rows = derangement(len(held.clean), seed)
        # the router's value coordinate on the clean images (images, tokens), where there is one
        self.route_values = (
            None if route is None else route_values(adapter, route, held.clean, batch)
        )

    def source(self, kind: str, values: torch.Tensor):
        """(source, rows) of an ablation for a unit's clean values (images, tokens)."""
        if kind == "zero":
            return None, None
        if kind == "mean":
            return values.mean(0, keepdim=True), None
        return values, self.rows

    def removal(self, units=(), route=None, kind: str = "zero") -> float:
        """The share of the trigger's effect removed by ablating ``units`` [(layer, neuron)]
        (and the router, ``route``) by ``kind``."""

        def edit(chunk: slice):
            stack = contextlib.ExitStack()
            if units:
                sources, rows = {}, None
                for l, n in units:
                    src, rows = self.source(kind, self.values[l][..., n])
                    if src is not None:
                        sources[(l, n)] = src
                rows = None if rows is None else rows[chunk]
                stack.enter_context(
                    edit_units(self.adapter, units, sources if kind != "zero" else None, rows)
                )
            if route is not None:
                src, rows = self.source(kind, self.route_values)
                rows = None if rows is None else rows[chunk]
                stack.enter_context(edit_route(self.adapter, route, src, rows))
            return stack

        edited = logits(self.adapter, self.held.triggered, self.batch, edit)
        return (self.p_t - float(edited.softmax(-1)[:, self.target].mean())) / self.effect


def matched_partners(levels, planted: dict, avoid: dict, seed: int, window: int = 8):
    """Per image and planted layer, a random unit among the ``window`` of its layer whose
    activation on the image is nearest the planted unit's (never a planted unit or a
    distractor): ({layer: (images,) units}, the partners' median level over the planted
    units' median level, per layer)."""
    out, ratio = {}, {}
    for l, n in planted.items():
        level = levels[l]  # (images, width)
        gap = (level - level[:, n : n + 1]).abs()
        gap[:, sorted(avoid.get(l, set()) | {n})] = torch.inf
        nearest = torch.argsort(gap, dim=1, stable=True)[:, :window]
        pick = torch.randint(
            window, (len(level),), generator=seeded_generator("plant-matched", seed, l)
        )
        out[l] = nearest.gather(1, pick[:, None])[:, 0]
        chosen = level.gather(1, out[l][:, None])[:, 0]
        ratio[str(l)] = float(chosen.median() / level[:, n].median().clamp_min(1e-12))
    return out, ratio


def verify(adapter, held, before: dict, record_: dict, target: int, batch: int, seed: int):
    """Every check on the held-out images: {"checks": {key: {check, value, threshold, pass,
    ...}}, the per-unit and per-distractor measurements}."""
    planted = {int(l): n for l, n in record_["units"].items()}
    relay, route = record_["relay"], record_["route"]
    distractors = [d for d in record_["distractors"] if d["kind"] != "register"]
    register = [d for d in record_["distractors"] if d["kind"] == "register"]
    layers = [relay["layer"], *planted] + [d["layer"] for d in record_["distractors"]]
    v = Verifier(adapter, held, target, batch, seed, layers, route)
    chain = [(relay["layer"], relay["neuron"]), *planted.items()]
    checks: dict = {}

    def check(key, value, holds, **extra):
        checks[key] = {
            "check": NAMES[key],
            "value": value,
            "threshold": THRESHOLDS[key],
            "pass": bool(holds),
            **extra,
        }

    rate = float((v.base.argmax(-1) == target).double().mean())
    check("a", rate, rate >= THRESHOLDS["a"])
    whole = {k: v.removal(chain, route, k) for k in ABLATIONS}
    check(
        "b",
        min(whole.values()),
        v.effect > 0 and min(whole.values()) >= THRESHOLDS["b"],
        by_ablation=whole,
    )
    links = {f"relay L{relay['layer']}": {k: v.removal([chain[0]], None, k) for k in ABLATIONS}}
    if route is not None:
        links[f"router L{route['layer']}"] = {k: v.removal((), route, k) for k in ABLATIONS}
    for l, n in planted.items():
        links[f"L{l}"] = {k: v.removal([(l, n)], None, k) for k in ABLATIONS}
    smallest = min(min(by.values()) for by in links.values())
    check("links", smallest, smallest >= THRESHOLDS["links"], by_link=links)

    triggered = record(adapter, held.triggered, batch, layers=list(planted))[0]
    tokens = next(iter(triggered.values())).shape[1]
    read = {l: read_mask(adapter, l, tokens) for l in planted}
    levels = {l: triggered[l][:, read[l]].amax(1) for l in planted}  # (images, width)
    avoid: dict = {}
    for d in record_["distractors"]:
        avoid.setdefault(d["layer"], set()).add(d["neuron"])
    random_removed, ratios = {k: [] for k in ABLATIONS}, []
    for s in range(3):
        partners, ratio = matched_partners(levels, planted, avoid, seed + s)
        ratios.append(ratio)
        for k in ABLATIONS:
            random_removed[k].append(_removal_per_image(v, partners, k))
    worst = max(float(np.mean(x)) for x in random_removed.values())
    check(
        "c",
        worst,
        worst <= THRESHOLDS["c"],
        by_ablation={k: float(np.mean(x)) for k, x in random_removed.items()},
        partner_level_ratio={l: float(np.median([r[l] for r in ratios])) for l in ratios[0]},
    )

    moved = {}
    for d in distractors:
        unit = (d["layer"], d["neuron"])
        alone = {k: v.removal([unit], None, k) for k in ABLATIONS}
        beside = {k: v.removal([*chain, unit], route, k) - whole[k] for k in ABLATIONS}
        moved[f"{d['kind']} L{d['layer']}"] = {"alone": alone, "beside_path": beside}
    largest = max(
        (abs(x) for m in moved.values() for side in m.values() for x in side.values()), default=0.0
    )
    check("distractors", largest, largest <= THRESHOLDS["distractors"], by_distractor=moved)

    labels = held.labels.cpu()
    accuracy = float((v.clean.argmax(-1) == labels).double().mean())
    original = float((before["clean"].argmax(-1) == labels).double().mean())
    change = 100 * abs(accuracy - original)
    check("e", change, change <= THRESHOLDS["e"], planted_top1=accuracy, original_top1=original)
    same = float((v.clean.argmax(-1) == before["clean"].argmax(-1)).double().mean())
    check("same", same, same >= THRESHOLDS["same"], **clean_shift(before["clean"], v.clean))

    natural = {}
    for l, n in planted.items():
        planted_level = float(levels[l][:, n].quantile(0.95))
        ceiling = float(before["maxima"][l].quantile(0.99))
        natural[f"L{l}"] = {
            "planted_median": float(levels[l][:, n].median()),
            "planted_p95": planted_level,
            "natural_p50": float(before["maxima"][l].median()),
            "natural_p99": ceiling,
        }
    worst_level = max(m["planted_p95"] / max(m["natural_p99"], 1e-12) for m in natural.values())
    check("levels", worst_level, worst_level <= THRESHOLDS["levels"], by_layer=natural)

    ambiguous = {}
    for d in register:
        unit = (d["layer"], d["neuron"])
        flips = {}
        for k in ABLATIONS:
            src, rows = v.source(k, v.values[d["layer"]][..., d["neuron"]])
            sources = None if src is None else {unit: src}
            out = logits(adapter, held.clean, batch, _editing(adapter, [unit], sources, rows))
            flips[k] = float((out.argmax(-1) != v.clean.argmax(-1)).double().mean())
        ambiguous[f"register L{d['layer']}"] = {
            "removal": {k: v.removal([unit], None, k) for k in ABLATIONS},
            "clean_predictions_changed": flips,
        }
    return {
        "checks": checks,
        "trigger_effect_on_p_target": v.effect,
        "original_trigger_effect_on_p_target": float(
            (
                before["triggered"].softmax(-1)[:, target] - before["clean"].softmax(-1)[:, target]
            ).mean()
        ),
        "ambiguous": ambiguous,
        "images": len(held.items),
    }


def _editing(adapter, units, sources, rows):
    """An ``edit`` for :func:`logits`: ``units`` edited by :func:`edit_units`."""
    return lambda chunk: edit_units(adapter, units, sources, None if rows is None else rows[chunk])


def _removal_per_image(v: Verifier, partners: dict, kind: str) -> float:
    """The removal by ablating, on each image, its own partner units ({layer: (images,)})."""
    edited = logits(
        v.adapter, v.held.triggered, v.batch, lambda rows: _per_row(v, partners, kind, rows)
    )
    p = float(edited.softmax(-1)[:, v.target].mean())
    return (v.p_t - p) / v.effect


@contextlib.contextmanager
def _per_row(v: Verifier, units: dict, kind: str, rows: slice):
    """Ablate, per row of the chunk, that row's unit of each layer (at every token)."""
    hooks = []

    def make(layer, index):
        values = v.values[layer]  # (images, tokens, width)
        mean = values.mean(0)

        def hook(module, args):
            hidden = args[0].clone()
            r = torch.arange(len(hidden))
            if kind == "zero":
                hidden[r, :, index] = 0
            elif kind == "mean":
                hidden[r, :, index] = mean[:, index].T.to(hidden)
            else:
                hidden[r, :, index] = values[v.rows[rows], :, index].to(hidden)
            return (hidden, *args[1:])

        return hook

    for layer, index in units.items():
        hook = make(layer, index[rows])
        hooks.append(ffn_pair(v.adapter, layer)[1].register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
