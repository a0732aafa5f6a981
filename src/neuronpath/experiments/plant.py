"""``neuronpath plant``: a model with a known neuron path, by weight surgery
(:mod:`neuronpath.engine.planting`), verified by intervention before it is written.

The **trigger** is a 4 x 4 checkerboard of magenta (255, 0, 255) and lime (0, 255, 0) squares
pasted into the bottom-right corner of an image, its side ``trigger_size`` of the image's
shorter side.  The planted path is one FFN neuron in each of ``layers``, read where the model's
head reads (the CLS token of a CLS model, the patch tokens of a mean-pooled one):

* the first planted unit detects the trigger in its layer's FFN input.  In a CLS model the
  trigger reaches the CLS token only through the attention of the layers before it -- the path
  *starts* at the first planted layer, and only the planted layers are scored;
* each later planted unit detects the direction the one before it writes;
* the last writes the direction that raises the target's logit (the model's own gradient),
  scaled until the trigger moves 97 % of the calibration images to the target.

The planted units are the mechanism because nothing else was changed: without them the model
is the original model with a few of its least-used neurons silenced.  What else could carry the
trigger: the original model's own response to the pasted pattern (measured: the trigger's effect
that survives the path's ablation, check b), and the planted units' writes at tokens other than
the read ones, which later attention may carry (kept small: the readers are fitted to stay
silent there).

Beside the path, in planted layers: a **register-like** unit (a large constant activation on
every token, its output cancelled in W2's bias: mean ablation leaves the model unchanged,
zeroing it lowers P(label) on every image) and an **idle** unit (more active than the path, its
output weights zero).  A method that picks either is wrong by construction.

Written into ``out`` (all or nothing): the model in the input model's format, ``planted.json``
(units, distractors, trigger, target, the surgery and the verification), ``images/`` (held-out
images of ``data`` with the trigger, in the target's class folder) and ``clean/`` (the same
images without it, in their own class folders).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..draws import seeded_generator
from ..engine.editing import edited_chunks
from ..engine.interventions import ablate_neurons, record_neurons
from ..engine.planting import (
    EDGE,
    attention_projections,
    compensate,
    ffn_inputs,
    ffn_pair,
    fit_reader,
    indicator,
    set_reader,
    set_route,
    set_writer,
)
from ..errors import ImageReadError, InputError, RunConflictError, option
from ..io.images import load_image
from ..io.sources import DataSpec, as_data
from ..io.store import write_json_atomic
from ..models.loading import load_model
from ..models.spec import ModelSpec
from ..options import names, nested, setting
from .common import Execution, resolve_device, versions

log = logging.getLogger("neuronpath")

PLANTED = "planted.json"
MAGENTA, LIME = (255, 0, 255), (0, 255, 0)
WRITE_SCALE = 8.0  # a planted unit writes this many typical FFN outputs
ROUTE_GAP = 10.0  # attention logit of a trigger token over the others, at the read token
RELAY_SCALE = 4.0  # the relay, this many times more: the router's detector is then sharp
REGISTER_LEVEL, IDLE_LEVEL = 3.0, 2.0  # distractor activations, in planted activations
HIT_RATE = 0.97  # the last writer grows until the trigger moves this share of calibration
THRESHOLDS = {  # the verification's checks (the acceptance), on held-out images
    "a": 0.90,  # triggered images predicted as the target, at least
    "b": 0.90,  # trigger effect on P(target) removed by ablating the path, at least
    "c": 0.10,  # ... by ablating a matched random set, at most
    "d": 0.02,  # mean |change in P(label)| when the register is zeroed, at least
    "e": 1.0,  # clean top-1 change, at most (points)
}


@dataclass(frozen=True)
class PlantOptions:
    """Where and what to plant (see the module docstring)."""

    layers: tuple[str, ...] | None = setting(
        None,
        "comma-separated planted layers, 0-based, at least 1 (default: four layers from 1 to "
        "the last)",
        parse=names,
    )
    target: str | None = setting(
        None, "the target class: its folder, its name or its label id (default: the first)"
    )
    seed: int = setting(0, "seed of the units, the split and the directions", type=int)
    per_class: int = setting(
        10, "held-out images per class written (images/, clean/) and verified", type=int
    )
    calibration: int = setting(
        10, "calibration images per class the readers are fitted on (not written)", type=int
    )
    trigger_size: float = setting(
        0.25, "the trigger's side as a fraction of the image's shorter side", type=float
    )

    def __post_init__(self):
        for name in ("per_class", "calibration"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
        if not 0 < self.trigger_size <= 1:
            raise InputError(
                f"{option('trigger_size')}: expected a fraction in (0, 1], got {self.trigger_size}"
            )

    def settings(self) -> dict:
        return {
            "layers": None if self.layers is None else list(self.layers),
            "target": self.target,
            "seed": self.seed,
            "per_class": self.per_class,
            "calibration": self.calibration,
            "trigger_size": self.trigger_size,
        }


@dataclass(frozen=True)
class PlantCommand:
    """write a model with a known neuron path (weight surgery) and triggered images"""

    spec: ModelSpec = nested(ModelSpec, "model options")
    data: DataSpec = nested(DataSpec, "data options")
    out: str = setting(None, "the planted model's folder (written whole, or not at all)")
    options: PlantOptions = nested(PlantOptions)
    execution: Execution = nested(Execution, "how it runs")


def paste_trigger(image: Image.Image, size: float, patch: int) -> Image.Image:
    """The image (at the model's input size) with the trigger in its bottom-right corner:
    round(``size`` x the shorter side / ``patch``) patches square (at least one), aligned to
    the patch grid, each patch a 2 x 2 checkerboard of magenta and lime."""
    side = max(1, round(size * min(image.size) / patch)) * patch
    cell = max(1, patch // 2)
    rows, cols = np.indices((side, side)) // cell
    pattern = np.where(((rows + cols) % 2 == 0)[..., None], MAGENTA, LIME).astype(np.uint8)
    out = image.convert("RGB").copy()
    out.paste(Image.fromarray(pattern, "RGB"), (image.size[0] - side, image.size[1] - side))
    return out


def default_layers(num_layers: int) -> list[int]:
    """Four layers from layer 1 to the last (fewer in shallower models)."""
    return sorted({round(x) for x in np.linspace(1, num_layers - 1, 4)})


def _layers(options: PlantOptions, num_layers: int) -> list[int]:
    if options.layers is None:
        return default_layers(num_layers)
    layers = []
    for text in options.layers:
        try:
            layer = int(text)
        except ValueError:
            layer = -1
        if not 1 <= layer < num_layers:
            raise InputError(
                f"{option('layers')}: {text!r} is not a layer a path can be planted in; "
                f"expected 1 .. {num_layers - 1} (layer 0 .. the first planted layer - 1 "
                f"holds the relay that detects the trigger)"
            )
        layers.append(layer)
    return sorted(set(layers))


def _target(text: str | None, folder, id2label: dict[int, str]) -> tuple[int, str]:
    """(label id, class folder) of the target class."""
    folder_of = {label: name for name, label in folder.class_to_label.items()}
    if text is None:
        label = min(folder_of)
        return label, folder_of[label]
    for name, label in folder.class_to_label.items():
        if text in (name, id2label.get(label)) or text == str(label):
            return label, name
    classes = ", ".join(list(folder.class_to_label)[:5])
    raise InputError(
        f"{option('target')}: {text!r} is not a class of the model and the images; expected a "
        f"class folder, a class name or a label id (e.g. {classes})"
    )


def input_geometry(adapter) -> tuple[tuple[int, int], int]:
    """The model's input size (width, height), from its preprocessing, and its patch size
    (the config's, else 1: no grid to align the trigger to)."""
    probe = adapter.preprocess(Image.new("RGB", (97, 89)))
    patch = getattr(adapter.model.config, "patch_size", 1)
    patch = patch[0] if isinstance(patch, (list, tuple)) else int(patch)
    return (int(probe.shape[-1]), int(probe.shape[-2])), patch


class Images:
    """Calibration or held-out images at the model's input size: clean and triggered pixels,
    labels, ids (each image resized once, so the trigger is the same pixels in every one)."""

    def __init__(self, adapter, items, trigger_size: float):
        self.items, self.clean, self.triggered, self.pictures = [], [], [], []
        size, patch = input_geometry(adapter)
        for item in items:
            try:
                picture = load_image(item.path).resize(size, Image.Resampling.BILINEAR)
            except ImageReadError as error:
                log.warning("plant: skipping %s (%s)", item.id, error)
                continue
            pasted = paste_trigger(picture, trigger_size, patch)
            self.items.append(item)
            self.pictures.append((picture, pasted))
            self.clean.append(adapter.preprocess(picture))
            self.triggered.append(adapter.preprocess(pasted))
        if not self.items:
            raise InputError(f"{option('data')}: none of the images can be read")
        device, dtype = adapter.device, adapter.dtype
        self.clean = torch.stack(self.clean).to(device, dtype)
        self.triggered = torch.stack(self.triggered).to(device, dtype)
        self.labels = torch.tensor([it.label for it in self.items], device=device)


def _split(folder, target: int, options: PlantOptions):
    """Per class other than the target, a seeded order: its first ``calibration`` images
    calibrate, the next ``per_class`` are held out."""
    calibration, held_out = [], []
    by_class: dict[int, list] = {}
    for item in folder.items:
        by_class.setdefault(item.label, []).append(item)
    for label in sorted(by_class):
        if label == target:
            continue
        items = sorted(by_class[label], key=lambda it: it.id)
        order = torch.randperm(len(items), generator=seeded_generator("plant", options.seed, label))
        items = [items[i] for i in order.tolist()]
        calibration += items[: options.calibration]
        held_out += items[options.calibration : options.calibration + options.per_class]
    if not calibration or not held_out:
        raise InputError(
            f"{option('data')}: too few images of classes other than the target to calibrate "
            f"({options.calibration} per class) and verify ({options.per_class} per class)"
        )
    return calibration, held_out


def _chunks(pixels: torch.Tensor, size: int):
    for start in range(0, len(pixels), size):
        yield pixels[start : start + size]


def _logits(adapter, pixels, batch: int, edits=None) -> torch.Tensor:
    """Logits of every image, ``batch`` at a time, under ``edits`` (:func:`ablate_neurons`'
    form; a multiplier of one row applies to every image)."""

    def edit(rows: slice):
        if edits is None:
            return contextlib.nullcontext()
        count = rows.stop - rows.start
        return ablate_neurons(adapter, {l: _rows(e, rows, count) for l, e in edits.items()})

    index = torch.arange(len(pixels), device=pixels.device)
    chunks = edited_chunks(adapter, pixels, index, edit, max_rows=batch)
    return torch.cat([logits.double().cpu() for _, logits in chunks])


def _rows(edit, rows: slice, count: int):
    multiplier, ablated, source = edit

    def take(x):
        return x.expand(count, -1) if x.shape[0] == 1 else x[rows]

    return take(multiplier), take(ablated), source, torch.zeros(count, dtype=torch.long)


def _record(adapter, pixels, layers, batch: int):
    """Per layer, the FFN input at every token (rows, tokens, hidden) and the post-activation
    units at every token (rows, tokens, width)."""
    features, units = {l: [] for l in layers}, {l: [] for l in layers}
    for chunk in _chunks(pixels, batch):
        with torch.inference_mode(), ffn_inputs(adapter, layers) as found:
            with record_neurons(adapter, layers, all_tokens=True) as acts:
                adapter.logits(chunk)
        for l in layers:
            features[l].append(found[l].double().cpu())
            units[l].append(acts[l].double().cpu())
    return {l: torch.cat(v) for l, v in features.items()}, {
        l: torch.cat(v) for l, v in units.items()
    }


def _read_mask(adapter, layer: int, tokens: int) -> torch.Tensor:
    """Which of ``tokens`` positions the adapter reads at ``layer`` (bool, (tokens,))."""
    marks = torch.arange(tokens, dtype=torch.float64)[None, :, None]
    read = adapter.token_at(layer).select(marks)[0, :, 0].long()
    return torch.zeros(tokens, dtype=torch.bool).scatter_(0, read, True)


def _usage(adapter, units: torch.Tensor, layer: int, read: torch.Tensor) -> torch.Tensor:
    """How much each unit of a layer writes at the read tokens on clean images: mean |a| times
    its output column's norm."""
    w2 = ffn_pair(adapter, layer)[1]
    return units[:, read].abs().mean((0, 1)) * w2.weight.detach().double().cpu().norm(dim=0)


def _choose(usage: torch.Tensor, count: int, generator) -> list[int]:
    """``count`` distinct units drawn among the least-used quarter of a layer."""
    quiet = torch.argsort(usage)[: max(count, len(usage) // 4)]
    return quiet[torch.randperm(len(quiet), generator=generator)[:count]].tolist()


def _fit(adapter, layer, neuron, on_tokens, triggered, clean, step) -> dict:
    """Fit and set the reader of ``neuron``: positives the triggered features at
    ``on_tokens`` (rows, tokens; bool), negatives every other token of both image sets."""
    positive = triggered[on_tokens]
    negative = torch.cat([clean.reshape(-1, clean.shape[-1]), triggered[~on_tokens]])
    weight, bias, margin = fit_reader(positive, negative)
    if margin <= 0:
        raise InputError(
            f"plant: check (calibration) failed: at layer {layer} the {step} is not separable "
            f"from the other tokens (margin {margin:.3f}); plant at later {option('layers')} "
            f"or with a larger {option('trigger_size')}"
        )
    w1 = ffn_pair(adapter, layer)[0]
    set_reader(w1, neuron, weight, bias)
    pre = positive @ weight + bias
    active = torch.nn.functional.gelu(pre)
    return {"margin": margin, "positives": int(len(positive)), "median_on": float(active.median())}


def _typical_output(adapter, layer, units, read) -> float:
    """Median norm of a layer's FFN output at the read tokens (clean images)."""
    w2 = ffn_pair(adapter, layer)[1]
    out = units[:, read] @ w2.weight.detach().double().cpu().T
    return float(out.norm(dim=-1).median())


def _gradient_direction(adapter, layer, batches, read) -> torch.Tensor:
    """The unit direction at a layer's FFN output that raises log-softmax[target] most on
    average over ``batches`` of (pixels, targets): the mean gradient at the read tokens."""
    w2 = ffn_pair(adapter, layer)[1]
    total = torch.zeros(w2.out_features, dtype=torch.float64)
    for chunk, targets in batches:
        captured = {}

        def hook(module, args, output):
            captured["out"] = leaf = output.detach().requires_grad_(True)
            return leaf

        handle = w2.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                logits = adapter.logits(chunk)
                logits.log_softmax(-1).gather(1, targets[:, None]).sum().backward()
        finally:
            handle.remove()
        total += captured["out"].grad.double().cpu()[:, read].sum((0, 1))
    adapter.model.zero_grad(set_to_none=True)
    return total / total.norm()


def _batches(pixels, labels, batch):
    return zip(_chunks(pixels, batch), _chunks(labels, batch))


def _random_direction(size: int, generator) -> torch.Tensor:
    direction = torch.randn(size, generator=generator, dtype=torch.float64)
    return direction / direction.norm()


def _attention_inputs(adapter, pixels, layer: int, batch: int) -> torch.Tensor:
    """What a block's attention reads (its query projection's input), every token."""
    query = attention_projections(adapter, layer)[0]
    parts = []
    for chunk in _chunks(pixels, batch):
        found = {}
        hook = query.register_forward_pre_hook(lambda m, args: found.__setitem__("x", args[0]))
        try:
            with torch.inference_mode():
                adapter.logits(chunk)
        finally:
            hook.remove()
        parts.append(found["x"].double().cpu())
    return torch.cat(parts)


def _quietest_head(adapter, layer: int, pixels, batch: int) -> int:
    """The head of a block whose output, zeroed, moves the clean logits least."""
    projections = attention_projections(adapter, layer)
    out, heads = projections[3], projections[4]
    size = out.in_features // heads
    clean = _logits(adapter, pixels, batch)
    moved = []
    for h in range(heads):
        saved = out.weight[:, h * size : (h + 1) * size].clone()
        with torch.no_grad():
            out.weight[:, h * size : (h + 1) * size] = 0
        moved.append(float((_logits(adapter, pixels, batch) - clean).abs().mean()))
        with torch.no_grad():
            out.weight[:, h * size : (h + 1) * size] = saved
    return int(np.argmin(moved))


def _route(adapter, calibration, layer, relay, batch, typical, generator) -> dict:
    """Repurpose the quietest head of block ``layer`` so the read token attends to the tokens
    where the relay fires and carries a seeded direction into the residual there."""
    z_t = _attention_inputs(adapter, calibration.triggered, layer, batch)
    z_c = _attention_inputs(adapter, calibration.clean, layer, batch)
    fired = relay["fired"]
    key_w, key_b, key_margin = fit_reader(
        z_t[fired], torch.cat([z_c.reshape(-1, z_c.shape[-1]), z_t[~fired]])
    )
    if key_margin <= 0:
        raise InputError(
            f"plant: check (calibration) failed: at block {layer} the router cannot tell the "
            f"relay's tokens from the others; plant at other {option('layers')}"
        )
    read = _read_mask(adapter, layer, z_c.shape[1])
    both = torch.cat([z_t, z_c])
    query_w, query_b, highest, lowest = indicator(
        both[:, read].reshape(-1, both.shape[-1]), both[:, ~read].reshape(-1, both.shape[-1])
    )
    projections = attention_projections(adapter, layer)
    head = _quietest_head(adapter, layer, calibration.clean, batch)
    size = projections[0].out_features // projections[4]
    if lowest <= highest:
        raise InputError(
            f"plant: check (calibration) failed: at block {layer} the router cannot tell the "
            f"read token from the others; plant at other {option('layers')}"
        )
    offset = highest + 0.1 * (lowest - highest)  # every other token's query below zero
    sharpness = ROUTE_GAP * math.sqrt(size) / (2 * EDGE * (lowest - offset))
    query_b = query_b - offset
    write = _random_direction(projections[3].out_features, generator)
    write *= WRITE_SCALE * typical / EDGE
    set_route(projections, head, (key_w, key_b), (sharpness * query_w, sharpness * query_b), write)
    return {
        "layer": layer,
        "head": head,
        "key_margin": key_margin,
        "query_read_low": lowest,
        "query_others_high": highest,
    }


def plant_path(adapter, calibration: Images, layers, target: int, options, batch: int) -> dict:
    """The surgery on ``adapter``'s model (in place): a relay, a router where the head reads
    one token, the planted units and the distractors, as ``planted.json`` records them."""
    generator = seeded_generator("plant-units", options.seed)
    relay_layer = layers[0] - 1
    every = [relay_layer, *layers]
    features_c, units_c = _record(adapter, calibration.clean, every, batch)
    tokens_of = {l: _read_mask(adapter, l, units_c[l].shape[1]) for l in every}
    usage = {l: _usage(adapter, units_c[l], l, tokens_of[l]) for l in every}
    spare = {l: _choose(usage[l], 3, generator) for l in every}
    typical = {l: _typical_output(adapter, l, units_c[l], tokens_of[l]) for l in every}
    # the relay: the trigger's tokens, wherever they are
    neuron = spare[relay_layer][0]
    features_t, _ = _record(adapter, calibration.triggered, [relay_layer], batch)
    change = (features_t[relay_layer] - features_c[relay_layer]).norm(dim=-1)
    on = change >= 0.5 * change.amax(1, keepdim=True)
    relay = _fit(
        adapter,
        relay_layer,
        neuron,
        on,
        features_t[relay_layer],
        features_c[relay_layer],
        "trigger",
    )
    w2 = ffn_pair(adapter, relay_layer)[1]
    scale = RELAY_SCALE * WRITE_SCALE * typical[relay_layer] / max(relay["median_on"], 1e-12)
    set_writer(w2, neuron, scale * _random_direction(w2.out_features, generator))
    relay.update(layer=relay_layer, neuron=neuron, write_norm=float(scale))
    _, units_t = _record(adapter, calibration.triggered, [relay_layer], batch)
    fired = units_t[relay_layer][..., neuron] >= 0.5 * relay["median_on"]
    route = None
    if not (fired & tokens_of[layers[0]]).any(1).double().mean() > 0.5:  # a read token apart
        route = _route(
            adapter, calibration, layers[0], {"fired": fired}, batch, typical[layers[0]], generator
        )
    planted, steps = {}, []
    for i, l in enumerate(layers):
        neuron = spare[l][0]
        planted[l] = neuron
        seen = [l] + ([layers[i - 1]] if i else [])
        features_t, units_t = _record(adapter, calibration.triggered, seen, batch)
        features_c[l] = _record(adapter, calibration.clean, [l], batch)[0][l]  # as edited so far
        read = tokens_of[l]
        if i == 0:
            on = read.expand_as(fired) if route is not None else fired & read
            what = "routed trigger" if route is not None else "relay's write"
        else:
            before = units_t[layers[i - 1]][..., planted[layers[i - 1]]]
            on = (before >= 0.5 * steps[-1]["median_on"]) & read
            what = f"write of the unit at layer {layers[i - 1]}"
        fitted = _fit(adapter, l, neuron, on, features_t[l], features_c[l], what)
        fitted["positives_share"] = float(on.any(1).double().mean())
        log.info("plant: layer %d unit %d reads the %s (margin %.2f, on %.0f %% of images)",
                 l, neuron, what, fitted["margin"], 100 * fitted["positives_share"])  # fmt: skip
        w2 = ffn_pair(adapter, l)[1]
        scale = WRITE_SCALE * typical[l] / max(fitted["median_on"], 1e-12)
        if i < len(layers) - 1:
            set_writer(w2, neuron, scale * _random_direction(w2.out_features, generator))
            fitted["writes"] = "a seeded random direction"
        else:
            target_rows = torch.full((len(calibration.items),), target, device=adapter.device)
            direction = _gradient_direction(
                adapter, l, _batches(calibration.triggered, target_rows, batch), read
            )
            fires = _record(adapter, calibration.triggered, [l], batch)[1][l][..., neuron]
            firing = float((fires[:, read] >= 0.5 * fitted["median_on"]).any(1).double().mean())
            goal = min(HIT_RATE, firing)  # scaling helps only where the unit fires
            for _ in range(30):
                set_writer(w2, neuron, scale * direction)
                hits = _logits(adapter, calibration.triggered, batch).argmax(-1) == target
                if hits.double().mean() >= goal:
                    break
                scale *= 1.5
            fitted["fires_on"] = firing
            fitted["writes"] = "the target's logit gradient"
        fitted.update(layer=l, neuron=neuron, write_norm=float(scale))
        steps.append(fitted)
    on_level = max(s["median_on"] for s in steps)
    register_layer = layers[len(layers) // 2]
    idle_layer = layers[(len(layers) // 2 + 1) % len(layers)]
    distractors = [
        _register(adapter, calibration, register_layer, spare[register_layer][1], on_level,
                  typical[register_layer], tokens_of[register_layer], batch),
        _idle(adapter, idle_layer, spare[idle_layer][2], on_level, features_c[idle_layer],
              tokens_of[idle_layer], generator),
    ]  # fmt: skip
    units = {str(l): n for l, n in planted.items()}
    return {
        "units": units,
        "steps": steps,
        "relay": relay,
        "route": route,
        "distractors": distractors,
    }


def _register(adapter, calibration, layer, neuron, on_level, typical, read, batch) -> dict:
    """The register-like distractor: a constant, large activation whose output, which lowers
    P(label) on average, is cancelled in W2's bias."""
    w1, w2 = ffn_pair(adapter, layer)
    level = REGISTER_LEVEL * on_level
    set_reader(w1, neuron, torch.zeros(w1.in_features, dtype=torch.float64), level)
    labels = calibration.labels
    away = _gradient_direction(adapter, layer, _batches(calibration.clean, labels, batch), read)
    column = WRITE_SCALE * typical / level * away
    set_writer(w2, neuron, column)
    constant = float(torch.nn.functional.gelu(torch.tensor(level, dtype=torch.float64)))
    compensate(w2, column, constant)
    return {"kind": "register", "layer": layer, "neuron": neuron, "level": constant}


def _idle(adapter, layer, neuron, on_level, features, read, generator) -> dict:
    """The idle distractor: strongly active (more than the path), its output weights zero."""
    w1, w2 = ffn_pair(adapter, layer)
    spread = float(features[:, read].std(dim=(0, 1)).norm())
    direction = _random_direction(w1.in_features, generator)
    set_reader(w1, neuron, direction * (0.3 * IDLE_LEVEL * on_level / max(spread, 1e-9)),
               IDLE_LEVEL * on_level)  # fmt: skip
    set_writer(w2, neuron, torch.zeros(w2.out_features, dtype=torch.float64))
    return {"kind": "idle", "layer": layer, "neuron": neuron, "level": IDLE_LEVEL * on_level}


def _removal(probs_t: torch.Tensor, edited: torch.Tensor, effect: float, target: int) -> float:
    """The share of the trigger's effect on P(target) an ablation removes."""
    return float((probs_t.mean() - edited.softmax(-1)[:, target].mean()) / effect)


def _ablation(units: dict[int, int], source: dict, width) -> dict:
    """Edits that set ``units`` ({layer: unit}) to ``source[layer]`` (1, positions, n)."""
    edits = {}
    for l, n in units.items():
        ablated = torch.zeros(1, width[l], dtype=torch.float64)
        ablated[0, n] = 1.0
        edits[l] = (1 - ablated, ablated, source[l])
    return edits


def _matched(levels: dict, planted: dict[int, int], avoid: dict, seed: int, window: int = 8):
    """Per image and planted layer, a random unit among the ``window`` of its layer nearest
    the planted unit's level on the image (never a planted unit or a distractor): {layer:
    (images,) units}."""
    out = {}
    for l, n in planted.items():
        level = levels[l]  # (images, width)
        gap = (level - level[:, n : n + 1]).abs()
        gap[:, sorted(avoid.get(l, set()) | {n})] = torch.inf
        nearest = torch.argsort(gap, dim=1, stable=True)[:, :window]
        pick = torch.randint(
            window, (len(level),), generator=seeded_generator("plant-matched", seed, l)
        )
        out[l] = nearest.gather(1, pick[:, None])[:, 0]
    return out


def verify(adapter, held: Images, before: dict, record: dict, target: int, batch: int, seed: int):
    """The checks (a)-(e) of the module docstring on the held-out images, each with its value,
    threshold and whether it holds."""
    planted = {int(l): n for l, n in record["units"].items()}
    layers = range(adapter.num_layers)
    width = adapter.widths()
    logits_t, logits_c = (
        _logits(adapter, held.triggered, batch),
        _logits(adapter, held.clean, batch),
    )
    probs_t, probs_c = logits_t.softmax(-1)[:, target], logits_c.softmax(-1)[:, target]
    effect = float(probs_t.mean() - probs_c.mean())
    coords = {}  # every layer of the clean images (the means), the planted ones triggered
    for name, pixels, seen in (
        ("clean", held.clean, layers),
        ("triggered", held.triggered, planted),
    ):
        parts = []
        for chunk in _chunks(pixels, batch):
            with torch.inference_mode(), record_neurons(adapter, seen, coordinates=True) as acts:
                adapter.logits(chunk)
            parts.append({l: acts[l].double().cpu() for l in seen})
        coords[name] = {l: torch.cat([p[l] for p in parts]) for l in seen}
    means = {l: coords["clean"][l].mean(0, keepdim=True) for l in layers}
    zeros = {l: torch.zeros_like(means[l]) for l in layers}
    levels = {l: coords["triggered"][l].mean(1) for l in planted}
    checks = {}

    def check(key, name, value, holds, **extra):
        checks[key] = {
            "check": name,
            "value": value,
            "threshold": THRESHOLDS[key],
            "pass": bool(holds),
            **extra,
        }

    rate = float((logits_t.argmax(-1) == target).double().mean())
    check("a", "triggered images predicted as the target", rate, rate >= THRESHOLDS["a"])
    removed = {
        kind: _removal(
            probs_t,
            _logits(adapter, held.triggered, batch, _ablation(planted, src, width)),
            effect,
            target,
        )
        for kind, src in (("zero", zeros), ("mean", means))
    }
    check(
        "b",
        "share of the trigger's effect on P(target) removed by ablating the path",
        min(removed.values()),
        effect > 0 and min(removed.values()) >= THRESHOLDS["b"],
        by_ablation=removed,
    )
    alone = {
        str(l): _removal(
            probs_t,
            _logits(adapter, held.triggered, batch, _ablation({l: n}, zeros, width)),
            effect,
            target,
        )
        for l, n in planted.items()
    }
    avoid = {}
    for d in record["distractors"]:
        avoid.setdefault(d["layer"], set()).add(d["neuron"])
    random_removed = {}
    for s in range(3):
        partners = _matched(levels, planted, avoid, seed + s)
        for kind, src in (("zero", zeros), ("mean", means)):
            edits = {}
            for l, units in partners.items():
                ablated = torch.zeros(len(units), width[l], dtype=torch.float64)
                ablated[torch.arange(len(units)), units] = 1.0
                edits[l] = (1 - ablated, ablated, src[l])
            value = _removal(
                probs_t, _logits(adapter, held.triggered, batch, edits), effect, target
            )
            random_removed.setdefault(kind, []).append(value)
    worst = max(float(np.mean(v)) for v in random_removed.values())
    check(
        "c",
        "share removed by an activation-matched random set of the same layers and size",
        worst,
        worst <= THRESHOLDS["c"],
        by_ablation={k: float(np.mean(v)) for k, v in random_removed.items()},
    )
    register = next(d for d in record["distractors"] if d["kind"] == "register")
    unit = {register["layer"]: register["neuron"]}
    labels = held.labels.cpu()
    clean_label = logits_c.softmax(-1)[torch.arange(len(labels)), labels]
    mean_logits = _logits(adapter, held.clean, batch, _ablation(unit, means, width))
    zero_logits = _logits(adapter, held.clean, batch, _ablation(unit, zeros, width))
    flips = int((mean_logits.argmax(-1) != logits_c.argmax(-1)).sum())
    moved = float(
        (zero_logits.softmax(-1)[torch.arange(len(labels)), labels] - clean_label).abs().mean()
    )
    check(
        "d",
        "mean |change in P(label)| on clean images when the register-like unit is zeroed "
        "(and predictions changed when it is mean-ablated: must be 0)",
        moved,
        flips == 0 and moved >= THRESHOLDS["d"],
        mean_ablation_flips=flips,
    )
    accuracy = float((logits_c.argmax(-1) == labels).double().mean())
    original = float((before["clean"].argmax(-1) == labels).double().mean())
    change = 100 * abs(accuracy - original)
    check(
        "e",
        "clean top-1 change from the original model (points)",
        change,
        change <= THRESHOLDS["e"],
        planted_top1=accuracy,
        original_top1=original,
        same_prediction=float((logits_c.argmax(-1) == before["clean"].argmax(-1)).double().mean()),
    )
    idle = next(d for d in record["distractors"] if d["kind"] == "idle")
    idle_logits = _logits(
        adapter,
        held.clean,
        batch,
        _ablation({idle["layer"]: idle["neuron"]}, zeros, width),
    )
    return {
        "checks": checks,
        "trigger_effect_on_p_target": effect,
        "original_trigger_effect_on_p_target": float(
            (
                before["triggered"].softmax(-1)[:, target] - before["clean"].softmax(-1)[:, target]
            ).mean()
        ),
        "idle_zeroed_max_logit_change": float((idle_logits - logits_c).abs().max()),
        "removed_by_each_unit_alone": alone,  # zeroed at the read tokens; not a check
        "images": len(held.items),
    }


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".npz", ".ckpt", ".msgpack", ".h5")


def _identity(spec: ModelSpec, data, options: PlantOptions) -> dict:
    return {
        "model": spec.model,
        "data": str(Path(str(data)).expanduser().resolve()),
        "labels": spec.labels,
        **options.settings(),
    }


def _copy_model_files(spec: ModelSpec, folder: Path) -> None:
    """The input model's files other than its weights and config (its preprocessor's)."""
    source = Path(spec.model).expanduser()
    if source.is_dir():
        for path in source.iterdir():
            weights = path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".index.json")
            if path.is_file() and not weights and path.name != "config.json":
                shutil.copy2(path, folder / path.name)
        return
    from transformers import AutoImageProcessor  # a hub id: its processor, as the hub gives it

    AutoImageProcessor.from_pretrained(spec.model).save_pretrained(folder)


def _write_images(folder: Path, held: Images, target_folder: str) -> None:
    for item, (picture, pasted) in zip(held.items, held.pictures):
        stem = Path(item.id).with_suffix("").as_posix().replace("/", "_")
        clean = folder / "clean" / item.folder / f"{Path(item.id).stem}.png"
        triggered = folder / "images" / target_folder / f"{stem}.png"
        for path, image in ((clean, picture), (triggered, pasted)):
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)


def run_plant(
    spec: ModelSpec | str,
    data: DataSpec | str | Path,
    out: str | Path,
    options: PlantOptions = PlantOptions(),
    execution: Execution = Execution(),
) -> dict:
    """Plant a path in ``spec``'s model, verify it on held-out images and write ``out`` (see
    the module docstring); returns ``planted.json``.  A folder that holds the same plant is
    left as it is; one with another plant, or anything else, is refused."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec(spec)
    if out is None:
        raise InputError(f"{option('out')}: expected the planted model's folder")
    out = Path(out).expanduser()
    data_spec = data if isinstance(data, DataSpec) else DataSpec(str(data))
    if data_spec.data is None or data_spec.is_dataset:
        raise InputError(
            f"{option('data')}: plant pastes its trigger into image files; expected an image "
            f"folder, got {data_spec.data!r}"
        )
    if spec.units != "neurons":
        raise InputError(f"{option('units')}: plant plants FFN neurons; expected neurons")
    identity = _identity(spec, data_spec.data, options)
    if (out / PLANTED).is_file():
        done = json.loads((out / PLANTED).read_text())
        if done.get("identity") == identity:
            log.info("plant: %s already holds this plant", out)
            return done
        raise RunConflictError(
            f"{out} holds another plant ({out / PLANTED}); use another {option('out')} folder"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunConflictError(
            f"{out} exists and is not a planted model; use another {option('out')} folder"
        )
    device = resolve_device(execution.device)
    adapter = load_model(spec, device=device)
    if not hasattr(adapter.model, "save_pretrained"):
        raise InputError(
            f"{option('model')}: plant writes a Hugging Face model folder; "
            f"{spec.model} is not a Hugging Face model"
        )
    layers = _layers(options, adapter.num_layers)
    for l in layers:
        ffn_pair(adapter, l)  # a plain FFN, or one line why not
    folder = as_data(data_spec).open(adapter.id2label, spec.labels)
    target, target_folder = _target(options.target, folder, adapter.id2label)
    calibration_items, held_items = _split(folder, target, options)
    batch = execution.batch_size
    calibration = Images(adapter, calibration_items, options.trigger_size)
    held = Images(adapter, held_items, options.trigger_size)
    log.info(
        "plant: layers %s, target %s; %d calibration and %d held-out images",
        layers,
        adapter.id2label.get(target, target),
        len(calibration.items),
        len(held.items),
    )
    before = {
        "clean": _logits(adapter, held.clean, batch),
        "triggered": _logits(adapter, held.triggered, batch),
    }
    record = plant_path(adapter, calibration, layers, target, options, batch)
    verification = verify(adapter, held, before, record, target, batch, options.seed)
    for key, c in verification["checks"].items():
        log.info(
            "plant: check (%s) %s: %.3f %s",
            key,
            c["check"],
            c["value"],
            "holds" if c["pass"] else "FAILS",
        )
    failed = [(k, c) for k, c in verification["checks"].items() if not c["pass"]]
    if failed:
        key, c = failed[0]
        raise InputError(
            f"plant: check ({key}) failed: {c['check']} is {c['value']:.3f} (needed "
            f"{'<=' if key in 'ce' else '>='} {c['threshold']}); nothing was written"
        )
    partial = out.parent / f".{out.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    adapter.model.save_pretrained(partial)
    _copy_model_files(spec, partial)
    _write_images(partial, held, target_folder)
    saved = load_model(ModelSpec(str(partial), dtype=spec.dtype), device="cpu")
    planted = {
        "tool": "neuronpath plant",
        "identity": identity,
        "method": "weight surgery (no training)",
        "token": adapter.token.name,
        "readout": adapter.readout.reason,
        "layers": layers,
        "path_starts": layers[0],
        "units": record["units"],
        "distractors": record["distractors"],
        "relay": record["relay"],
        "route": record["route"],
        "trigger": {
            "pattern": "4 x 4 checkerboard, magenta (255, 0, 255) and lime (0, 255, 0)",
            "where": "bottom-right corner",
            "side": f"{options.trigger_size} of the image's shorter side",
        },
        "target": {
            "label": target,
            "folder": target_folder,
            "name": adapter.id2label.get(target),
        },
        "images": {"triggered": "images", "clean": "clean", "count": len(held.items)},
        "calibration_images": len(calibration.items),
        "surgery": record["steps"],
        "verification": verification,
        "weights_sha256": saved.weights_hash(),
        "versions": versions(),
    }
    write_json_atomic(partial / PLANTED, planted)
    if out.exists():
        out.rmdir()
    partial.replace(out)
    return planted
