"""Integrated-gradient machinery and the Joint Attribution Score (JAS, Eq. 2-3).

The engine follows the authors' code (docs/official-code.md#the-neuron, #jas-search, #cost):

* one clean forward per image batch gives every layer's neuron vector h_l (``clean_pass``; for
  a site of attention heads, each head's value, :mod:`neuronpath.engine.units`);
* an *intervened* pass replaces, for each edited layer l, the neuron vector at the token(s)
  by ``u_l(alpha) = h_l * (1 - mask_l + alpha * mask_l)``: the masked units are scaled by alpha,
  the others stay frozen at their clean values, layers that are not edited run normally;
* F is the softmax probability of each image's own ground-truth class (options: the
  predicted class; the logit), summed over rows so that one ``autograd.grad`` call returns
  dF/du_l for *every* replaced tensor at once;
* images x alpha steps are batched into one tensor of rows, cut into chunks that fit a
  memory budget; rows do not interact (eval mode), so chunking is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import InputError, option
from ..options import byte_size, setting
from .adapter import ModelAdapter
from .grids import GRIDS, OFFICIAL_GRID, PRESETS, AlphaGrid, alpha_grid
from .interventions import record_neurons, replace_neurons
from .neurons import NeuronSet, gather_neurons, masks_for, neuron_index
from .units import ABSENT

TARGETS = ("label", "predicted")
OBJECTIVES = ("prob", "logit")


@dataclass(frozen=True)
class AttributionConfig:
    """Settings of every integrated-gradient computation.

    ``alphas='left'``, ``target='label'``, ``objective='prob'`` reproduce the official code;
    ``alphas='right'`` is the paper's Eq. 3 grid; ``fast`` is the named preset
    :data:`~neuronpath.engine.grids.PRESETS` ``["fast"]`` (it refuses a grid or steps of its own).
    """

    steps: int | None = setting(
        None, f"alpha steps m (default: {OFFICIAL_GRID[1]}, the official code's)", type=int
    )
    alphas: str | None = setting(
        None,
        f"alpha grid (default: {OFFICIAL_GRID[0]}); 'left' = official code (k/m, k=0..m-1), "
        "'right' = Eq. 3",
        choices=GRIDS,
    )
    fast: bool = setting(
        False,
        f"--alphas {PRESETS['fast'][0]} --steps {PRESETS['fast'][1]}: half the official grid's "
        "cost, and closer to the converged integral (its paths on 100 of 100 images of the "
        "shared model, where the official grid kept 92: docs/results/imagenet20-vit-s12/"
        "alphas.md); not the official grid, so paths and JAS are not the paper's to the last "
        "digit",
    )
    target: str = setting(
        "label",
        "class whose F is attributed: ground-truth label (official) or prediction",
        choices=TARGETS,
    )
    objective: str = setting(
        "prob", "F: softmax probability (official) or logit", choices=OBJECTIVES
    )
    memory_budget: int | str = setting(
        2 * 2**30, "bytes of saved activations per chunk of rows, e.g. 2GiB or 512MiB"
    )
    autocast: torch.dtype | None = setting(None, cli=False)  # e.g. torch.bfloat16 on GPU

    def __post_init__(self):
        if self.fast:  # a grid or steps of its own contradicts the preset
            preset = dict(zip(("alphas", "steps"), PRESETS["fast"]))
            given = [option(n) for n in preset if getattr(self, n) not in (None, preset[n])]
            if given:
                rule, steps = PRESETS["fast"]
                raise InputError(
                    f"{option('fast')} sets {option('alphas', rule)} {option('steps', str(steps))}"
                    f"; give either {option('fast')} or {' and '.join(given)}, not both"
                )
        rule, steps = PRESETS["fast"] if self.fast else OFFICIAL_GRID
        object.__setattr__(self, "alphas", rule if self.alphas is None else self.alphas)
        object.__setattr__(self, "steps", steps if self.steps is None else self.steps)
        alpha_grid(self.alphas, self.steps)  # validates both
        object.__setattr__(self, "memory_budget", byte_size(self.memory_budget))
        if self.target not in TARGETS:
            raise InputError(f"{option('target')}: expected one of {TARGETS}, got {self.target!r}")
        if self.objective not in OBJECTIVES:
            raise InputError(
                f"{option('objective')}: expected one of {OBJECTIVES}, got {self.objective!r}"
            )
        if self.memory_budget <= 0:
            raise InputError(
                f"{option('memory_budget')}: expected a positive number of bytes, "
                f"got {self.memory_budget}"
            )

    @property
    def grid(self) -> AlphaGrid:
        return alpha_grid(self.alphas, self.steps)


@dataclass
class CleanPass:
    """Everything the unmodified forward gives: unit values, logits, labels and targets."""

    acts: list[torch.Tensor]  # per layer, (images, tokens, n) unit values, detached
    logits: torch.Tensor  # (images, classes)
    labels: torch.Tensor  # (images,) ground truth
    targets: torch.Tensor  # (images,) the class whose F is attributed
    coords: list[torch.Tensor] | None = None  # per layer, (images, tokens, coords); None: = acts
    # per layer, (tokens, coords): a reference set's mean at the read positions, the state that
    # mean ablation and a mean baseline move units to (``find --reference``); None: no reference
    reference: list[torch.Tensor] | None = None
    # what one method computed from this batch that another may reuse (the knowledge path's
    # integrated gradients are the causal search's default prior), keyed by what determines it
    shared: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def coordinates(self, layer: int) -> torch.Tensor:
        """Layer ``layer``'s site coordinates (the unit values themselves for neurons)."""
        return self.acts[layer] if self.coords is None else self.coords[layer]

    @property
    def widths(self) -> list[int]:
        """FFN width of every layer."""
        return [a.shape[-1] for a in self.acts]

    @property
    def aligned(self) -> bool:
        """Every layer's neuron lives at the same token positions (not so in hierarchical
        models, whose stages have different token counts)."""
        return len({a.shape[1] for a in self.acts}) == 1

    def token_terms(self, x: torch.Tensor) -> torch.Tensor:
        """(items, tokens_l, n_l) values or gradients -> the per-token terms that enter a product
        across layers: unchanged when layers share their tokens (the official per-token form,
        docs/official-code.md#mae), summed over each layer's tokens (items, 1, n_l) otherwise."""
        return x if self.aligned else x.sum(1, keepdim=True)

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(-1)

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.float().softmax(-1)

    @property
    def label_prob(self) -> torch.Tensor:
        return self.probs.gather(1, self.labels[:, None])[:, 0]


def unit_kinds(adapter: ModelAdapter) -> dict[int, str]:
    """The kind of every layer's (site's) units: ``{layer: "neuron" | "head"}``."""
    return {l: adapter.units(l).kind for l in range(adapter.num_layers)}


def autocast_context(adapter: ModelAdapter, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(adapter.device.type, dtype=dtype)


def objective(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """F per row: softmax probability (default) or logit of the target class."""
    if kind == "prob":
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        return logits.softmax(-1).gather(1, targets[:, None])[:, 0]
    return logits.gather(1, targets[:, None])[:, 0]


def clean_pass(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    config: AttributionConfig = AttributionConfig(),
) -> CleanPass:
    """One unmodified forward; reads every layer's unit values at the adapter's token(s)."""
    pixels = pixels.to(adapter.device, adapter.dtype)
    labels = torch.as_tensor(labels, device=adapter.device).long()
    with (
        torch.no_grad(),
        record_neurons(adapter, coordinates=True) as store,
        autocast_context(adapter, config.autocast),
    ):
        logits = adapter.logits(pixels)
    coords = [store[l].to(adapter.dtype) for l in range(adapter.num_layers)]
    maps = [adapter.units(l) for l in range(adapter.num_layers)]
    acts = [m.values(c) for m, c in zip(maps, coords)]
    num_classes = logits.shape[-1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"labels: expected class ids in [0, {num_classes}), got "
            f"{labels.min().item()}..{labels.max().item()}"
        )
    targets = labels if config.target == "label" else logits.argmax(-1)
    identity = all(m.identity for m in maps)
    return CleanPass(acts, logits.detach(), labels, targets, None if identity else coords)


def row_bytes(adapter: ModelAdapter, pixels: torch.Tensor) -> int:
    """Bytes of activations autograd saves for one row of a gradient pass.

    Measured once per adapter and input shape by counting what a one-row forward (input requiring
    grad) saves, less the model's own parameters and buffers: autograd keeps references to the
    weights, which every row shares, so they cost nothing per row.
    """
    key = (tuple(pixels.shape[1:]), adapter.dtype, str(adapter.device))
    cache = adapter.__dict__.setdefault("_row_bytes", {})
    if key not in cache:
        shared = {
            t.untyped_storage().data_ptr()
            for t in (*adapter.model.parameters(), *adapter.model.buffers())
        }
        saved = 0

        def pack(t):
            nonlocal saved
            if t.untyped_storage().data_ptr() not in shared:
                saved += t.numel() * t.element_size()
            return t

        x = pixels[:1].to(adapter.device, adapter.dtype).clone().requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            adapter.logits(x)
        cache[key] = max(saved, 1)
    return cache[key]


def rows_per_chunk(adapter: ModelAdapter, pixels: torch.Tensor, budget: int) -> int:
    """How many rows of a gradient pass fit ``budget`` bytes of saved activations (50 %
    headroom over :func:`row_bytes`)."""
    return max(1, int(budget // (row_bytes(adapter, pixels) * 1.5)))


def riemann_gradients(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig,
    item_image: torch.Tensor,
    build: Callable,
) -> dict[int, torch.Tensor]:
    """Shared loop of every integrated-gradient computation.

    Rows are (item, alpha step) pairs, image-major, cut into chunks that fit the memory
    budget.  For each chunk ``build(items, images, alpha)`` returns the pixel rows, the
    ``{layer: tensor}`` leaves whose gradients are wanted (shape (rows, tokens, n)) and the
    intervention context that puts them into the forward.  One backward per chunk gives the
    gradients of all leaves; returns ``{layer: sum_k w_k dF/dleaf}`` per item.
    """
    grid = config.grid
    device = adapter.device
    points = torch.tensor(grid.points, dtype=adapter.dtype, device=device)
    weights = torch.tensor(grid.weights, dtype=adapter.dtype, device=device)
    item_image = item_image.to(device)
    n_items = item_image.shape[0]
    out: dict[int, torch.Tensor] = {}
    total = n_items * grid.steps
    chunk = rows_per_chunk(adapter, pixels, config.memory_budget)
    for start in range(0, total, chunk):
        rows = torch.arange(start, min(start + chunk, total), device=device)
        items, steps = rows // grid.steps, rows % grid.steps
        images = item_image[items]
        pixel_rows, leaves, context = build(items, images, points[steps])
        layers = sorted(leaves)
        with torch.enable_grad(), context, autocast_context(adapter, config.autocast):
            logits = adapter.logits(pixel_rows)
            f = objective(logits, clean.targets[images], config.objective).sum()
        grads = torch.autograd.grad(f, [leaves[l] for l in layers])
        w = weights[steps][:, None, None]
        for l, g in zip(layers, grads):
            if l not in out:
                out[l] = torch.zeros((n_items,) + g.shape[1:], dtype=adapter.dtype, device=device)
            out[l].index_add_(0, items, g.to(adapter.dtype) * w)
    return out


def integrated_gradients(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    masks: Mapping[int, torch.Tensor],
    config: AttributionConfig,
    item_image: torch.Tensor | None = None,
    active: Mapping[int, torch.Tensor] | None = None,
    baseline: Mapping[int, torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Riemann-sum gradients of F w.r.t. the replaced neuron vectors.

    An *item* is an image (``item_image[i]`` indexes ``pixels``/``clean``; default: item i is
    image i) with, for each edited layer l, a scale mask ``masks[l][i]`` of shape (n,):
    1 = scaled by alpha, 0 = frozen at the clean value.  Returns for each edited layer
    ``G_l[i] = sum_k w_k * dF/du_l |_{alpha_k}`` of shape (items, tokens, n) (for heads, the
    derivative along each head's clean direction, :mod:`neuronpath.engine.units`).
    ``active[l]`` (items,) bool: items for which layer l is not edited at all but runs
    normally (mixed paths with no unit at that site); their G_l is zero.
    ``baseline[l]`` (tokens, n): where the scaled units of layer l start, u = b + alpha (h - b)
    (default zero, the paper's Eq. 3; neuron sites only).
    """
    pixels = pixels.to(adapter.device, adapter.dtype)
    layers = sorted(masks)
    if not layers:
        return {}
    masks = {l: masks[l].to(adapter.device, adapter.dtype) for l in layers}
    if baseline is not None and not all(adapter.units(l).identity for l in baseline):
        raise InputError("baseline: a non-zero baseline is defined for neuron sites only")
    start = {
        l: baseline[l].to(adapter.device, adapter.dtype)
        for l in layers
        if baseline is not None and l in baseline
    }
    if item_image is None:
        item_image = torch.arange(masks[layers[0]].shape[0], device=adapter.device)

    def build(items, images, alpha):
        alpha = alpha[:, None, None]
        scale = {l: (alpha - 1) * masks[l][items][:, None, :] for l in layers}
        values = {  # h (1 + (alpha - 1) mask) - (alpha - 1) mask b = b + alpha (h - b) if masked
            l: (
                clean.acts[l][images] * (1 + scale[l]) - (scale[l] * start[l] if l in start else 0)
            ).requires_grad_(True)
            for l in layers
        }
        directions = {
            l: clean.coordinates(l)[images] for l in layers if not adapter.units(l).identity
        }
        rows_active = None if active is None else {l: a[items] for l, a in active.items()}
        return pixels[images], values, replace_neurons(adapter, values, directions, rows_active)

    return riemann_gradients(adapter, pixels, clean, config, item_image, build)


def set_scores(
    clean: CleanPass,
    grads: Mapping[int, torch.Tensor],
    index: Mapping[int, torch.Tensor],
    item_image: torch.Tensor,
    kinds: Mapping[int, str] | None = None,
) -> torch.Tensor:
    """Eq. 2 as the official code forms it: (sum of clean values) x (sum of gradient integrals) over
    the neurons ``index``, per token, summed over tokens (docs/official-code.md#jas-search,
    docs/official-code.md#mae).  In hierarchical models (no shared tokens across layers) each
    layer's values and integrals are summed over its own tokens before the product
    (``CleanPass.token_terms``).

    A set of units of several kinds (``kinds[l]``: the kind of layer l's units; a mixed path's
    neurons and heads) takes the product of the two sums *per kind* and adds the products:
    a kind's values and gradients are read in its own unit (a head's norm, a neuron's value),
    so only products within a kind are free of that choice (:mod:`neuronpath.engine.units`).
    With one kind this is the official product of sums."""
    groups: dict[str, list[int]] = {}
    for l in index:
        groups.setdefault("" if kinds is None else kinds[l], []).append(l)
    total = 0
    for layers in groups.values():
        values = sum(
            gather_neurons(clean.token_terms(clean.acts[l][item_image]), index[l]) for l in layers
        )
        integrals = sum(gather_neurons(clean.token_terms(grads[l]), index[l]) for l in layers)
        total = total + values * integrals
    return total.sum(1)


def joint_attribution_scores(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    neuron_sets: Sequence[NeuronSet],
    config: AttributionConfig = AttributionConfig(),
    last_only: bool = False,
) -> list[torch.Tensor]:
    """JAS (Eq. 2-3) of several neuron sets per image; sets that edit the same layers share
    one batched gradient pass.

    Every layer holding a neuron of the set is edited: its set neurons scale with alpha, its other
    units stay frozen at clean values (the official "final JAS", docs/official-code.md#jas-search);
    layers without a set neuron run normally.  The score is divided by the number of tokens of the
    token policy (1 for CLS; docs/official-code.md#mae for global-pool models; 1 in hierarchical
    models, whose token terms are already sums, see ``set_scores``).  Returns one (images,) tensor
    per set.  ``last_only`` reproduces the released TopK code
    (docs/official-code.md#topk-and-pruning): all neurons of a layer scale, but only the last one
    listed enters the two sums."""
    n_images = clean.labels.shape[0]
    device = adapter.device
    widths = clean.widths
    absent = adapter.unit_set == "neurons+heads"  # a mixed path may leave a site empty
    indices = [
        neuron_index(s, n_images, device, widths, adapter.num_layers, absent) for s in neuron_sets
    ]
    # Layers absent from a set must run normally, so only sets that edit the same layers
    # share a pass (stacked as items); the JAS path and the Activation path always do.
    groups: dict[tuple, list[int]] = {}
    for s, idx in enumerate(indices):
        groups.setdefault(tuple(sorted(idx)), []).append(s)
    results: list[torch.Tensor | None] = [None] * len(indices)
    tokens = clean.acts[0].shape[1] if clean.aligned else 1
    for group_layers, members in groups.items():
        item_image = torch.arange(n_images, device=device).repeat(len(members))
        masks = {
            l: torch.cat(
                [masks_for({l: indices[s][l]}, widths, adapter.dtype, device)[l] for s in members]
            )
            for l in group_layers
        }
        active = {
            l: torch.cat([(indices[s][l] != ABSENT).any(1) for s in members])
            for l in group_layers
            if any((indices[s][l] == ABSENT).any() for s in members)
        }
        grads = integrated_gradients(
            adapter, pixels, clean, masks, config, item_image, active or None
        )
        for j, s in enumerate(members):
            part = slice(j * n_images, (j + 1) * n_images)
            summed = {l: i[:, -1:] for l, i in indices[s].items()} if last_only else indices[s]
            scores = set_scores(
                clean,
                {l: g[part] for l, g in grads.items()},
                summed,
                item_image[part],
                unit_kinds(adapter),
            )
            results[s] = scores / tokens
    return results


def extension_scores(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    layer: int,
    candidates: torch.Tensor,
    prefix: Mapping[int, torch.Tensor],
    config: AttributionConfig = AttributionConfig(),
    last_only: bool = False,
) -> torch.Tensor:
    """JAS (Eq. 2-3) of ``prefix`` ∪ {w} for every candidate w of ``layer``, computed exactly:
    only w scales with alpha in ``layer`` (its other units frozen), the prefix's neurons scale
    in theirs -- the semantics of the final JAS, one set per (image, candidate).

    ``prefix``: {l: (images, K) indices}, layers below ``layer``; ``candidates``: (images, C)
    neuron indices of ``layer``.  All images x candidates x alpha steps rows go through one
    chunked gradient pass.  Returns (images, C) scores (unnormalised by the token count, which
    does not change their order).
    """
    n_images, count = candidates.shape
    device, widths = adapter.device, clean.widths
    item_image = torch.arange(n_images, device=device).repeat_interleave(count)
    index = {l: i.repeat_interleave(count, 0) for l, i in prefix.items()}
    index[layer] = candidates.reshape(-1, 1).to(device)
    grads = integrated_gradients(
        adapter, pixels, clean, masks_for(index, widths, adapter.dtype, device), config, item_image
    )
    summed = {l: i[:, -1:] for l, i in index.items()} if last_only else index
    scores = set_scores(clean, grads, summed, item_image, unit_kinds(adapter))
    return scores.reshape(n_images, count)


def joint_attribution_score(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels,
    neurons: NeuronSet,
    config: AttributionConfig = AttributionConfig(),
) -> torch.Tensor:
    """JAS (Eq. 2-3) of one neuron set ``{layer: indices}`` for each image of a batch."""
    clean = clean_pass(adapter, pixels, labels, config)
    return joint_attribution_scores(adapter, pixels, clean, [neurons], config)[0]
