"""Class-specific pruning guided by neuron paths (§4.4, App. E; spec §8).

Per class: split the images into probe and test sets (seeded, recorded); find TopK paths on
the probe images; keep, per layer, the t neurons chosen most often over the pooled probe
selections (``frequency``, App. E.2's text) or the official per-rank-slot mode (``slot-mode``,
spec §8); on the test images, zero each *non-kept* neuron of the first ``depth`` layers with
probability p (at the adapter's token), and measure top-1 accuracy **and** the mean ground-
truth probability (the released code's "accuracy" is the latter, spec §8).

Masks are drawn per (seed, image, layer) from their own generator on the CPU, so they are the
same whatever the batch size, device or order of processing.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from .adapters import ModelAdapter
from .interventions import _hooks
from .manipulation import seeded_generator

AGGREGATES = ("frequency", "slot-mode")


def split_probe_test(images_by_class: Mapping[str, Sequence[str]], fraction: float = 0.8,
                     seed: int = 0) -> dict[str, str]:
    """``{image: "probe" | "test"}``: per class, a seeded shuffle of the sorted image ids, the
    first round(fraction x n) (at least 1, at most n - 1) probing, the rest testing."""
    if not 0 < fraction < 1:
        raise ValueError(f"probe fraction: expected a number in (0, 1), got {fraction}")
    split = {}
    for name, images in images_by_class.items():
        images = sorted(images)
        if len(images) < 2:
            raise ValueError(f"class {name}: needs at least 2 images to split, has {len(images)}")
        generator = seeded_generator("split", seed, name)
        order = torch.randperm(len(images), generator=generator).tolist()
        n_probe = min(max(1, round(fraction * len(images))), len(images) - 1)
        for rank, i in enumerate(order):
            split[images[i]] = "probe" if rank < n_probe else "test"
    return split


def keep_by_frequency(selections: np.ndarray, t: int) -> list[list[int]]:
    """Per layer, the t most frequent neurons among the probe images' first t rank slots
    (ties: lower index).  ``selections``: (images, layers, K) with K >= t."""
    if selections.shape[2] < t:
        raise ValueError(f"keep {t}: the paths have only K = {selections.shape[2]} per layer")
    kept = []
    for l in range(selections.shape[1]):
        counts = Counter(selections[:, l, :t].ravel().tolist())
        kept.append(sorted(counts, key=lambda j: (-counts[j], j))[:t])
    return kept


def keep_by_slot_mode(selections: np.ndarray, t: int) -> list[list[int]]:
    """The released code's rule: for each layer and rank slot s < t separately, the most
    common neuron over the probe images (ties: lower index); duplicates collapse, so a layer
    can keep fewer than t distinct neurons."""
    if selections.shape[2] < t:
        raise ValueError(f"keep {t}: the paths have only K = {selections.shape[2]} per layer")
    kept = []
    for l in range(selections.shape[1]):
        slot_modes = []
        for s in range(t):
            counts = Counter(selections[:, l, s].tolist())
            slot_modes.append(min(counts, key=lambda j: (-counts[j], j)))
        kept.append(sorted(set(slot_modes)))
    return kept


def random_keep(class_name: str, seed: int, num_layers: int, width: int, t: int) -> list[list[int]]:
    """Control: t random neurons per layer for a class (seeded)."""
    g = seeded_generator("keep", seed, class_name)
    return [sorted(torch.randperm(width, generator=g)[:t].tolist()) for _ in range(num_layers)]


def prune_multipliers(image: str, seed: int, kept: Sequence[Sequence[int]], width: int, p: float,
                      depth: int) -> dict[int, torch.Tensor]:
    """{layer: (n,) 0/1 multiplier} for layers < depth: each non-kept neuron is zeroed with
    probability p (independent Bernoulli draws from a per-(seed, image, layer) generator)."""
    out = {}
    for l in range(depth):
        draws = torch.rand(width, generator=seeded_generator("mask", seed, image, l)) < p
        draws[list(kept[l])] = False
        out[l] = (~draws).double()
    return out


@contextlib.contextmanager
def multiply_neurons(adapter: ModelAdapter, multipliers: Mapping[int, torch.Tensor]) -> Iterator[None]:
    """Multiply layer l's neurons at the adapter's token(s) by ``multipliers[l]`` (rows, n)."""

    def make(layer):
        factor = multipliers[layer]

        def hook(module, inputs, output):
            selected = adapter.token.select(output)
            f = factor.to(selected.device, selected.dtype)[:, None, :]
            return adapter.token.insert(output, selected * f)
        return hook

    with _hooks(adapter, {layer: make(layer) for layer in multipliers}):
        yield


def pruned_predictions(adapter: ModelAdapter, pixels: torch.Tensor, labels: torch.Tensor,
                       multipliers: Sequence[Mapping[int, torch.Tensor]], width: int,
                       image_index: Sequence[int] | None = None,
                       max_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth probability and predicted label of each row: image ``image_index[r]``
    (default: row r is image r) under its own ``multipliers[r]`` (an empty dict is the
    unpruned model).  Runs in ``inference_mode``, ``max_rows`` rows per forward."""
    device = adapter.device
    pixels = pixels.to(device, adapter.dtype)
    labels = torch.as_tensor(labels, device=device).long()
    image_index = torch.as_tensor(list(range(len(multipliers))) if image_index is None
                                  else list(image_index), device=device)
    layers = sorted({l for m in multipliers for l in m})
    ones = torch.ones(width, dtype=torch.float64)
    probs, preds = [], []
    with torch.inference_mode():
        for start in range(0, len(multipliers), max_rows):
            rows = range(start, min(start + max_rows, len(multipliers)))
            stacked = {l: torch.stack([multipliers[r].get(l, ones) for r in rows]) for l in layers}
            images = image_index[start:start + len(rows)]
            with multiply_neurons(adapter, stacked):
                logits = adapter.logits(pixels[images])
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            probs.append(logits.softmax(-1).gather(1, labels[images][:, None])[:, 0])
            preds.append(logits.argmax(-1))
    return torch.cat(probs), torch.cat(preds)
