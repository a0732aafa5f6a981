"""Class-specific pruning guided by neuron paths (§4.4, App. E;
docs/official-code.md#topk-and-pruning).

Per class: split the images into probe and test sets (seeded, recorded); find TopK paths on the
probe images; keep, per layer, the t neurons chosen most often over the pooled probe selections
(``frequency``, App. E.2's text) or the official per-rank-slot mode (``slot-mode``,
docs/official-code.md#topk-and-pruning); on the test images, zero each *non-kept* neuron of the
first ``depth`` layers with probability p (at the adapter's token), and measure top-1 accuracy
**and** the mean ground-truth probability (the released code's "accuracy" is the latter,
docs/official-code.md#topk-and-pruning).

Masks are drawn per (seed, image, layer) from their own generator on the CPU, so they are the
same whatever the batch size, device or order of processing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..draws import per_layer, seeded_generator
from ..errors import InputError, option
from ..options import floats, integers, names, setting
from .bootstrap import mean_interval

AGGREGATES = ("frequency", "slot-mode")
BASELINES = ("vit-slim",)  # keep rules trained rather than read off paths


@dataclass(frozen=True)
class PruneSettings:
    """The pruning experiment's grid and statistics: kept neurons per layer ``keep`` (t), mask
    shares ``mask`` (p), depths ``depth`` (prune the first d layers; None: all), the probe
    share of each class, the seed of every draw, the keep rule, the Table 3 cell and the
    bootstrap resamples."""

    keep: tuple[int, ...] = setting((1, 5, 10, 30, 50), "kept neurons per layer", parse=integers)
    mask: tuple[float, ...] = setting(
        (0.1, 0.3, 0.5, 1.0), "share of the other neurons zeroed", parse=floats
    )
    depth: tuple[int, ...] | None = setting(
        None,
        "prune only the first d layers; several values give the Table 3 ablation (default: all)",
        parse=integers,
    )
    probe_fraction: float = setting(
        0.8, "share of each class's images whose paths choose the kept neurons", type=float
    )
    seed: int = setting(0, "seed of the probe/test split and of every mask", type=int)
    aggregate: str = setting(
        "frequency",
        "frequency over pooled probe selections (App. E.2) or the official per-rank-slot mode "
        "(docs/official-code.md#topk-and-pruning)",
        choices=AGGREGATES,
    )
    table_keep: int = setting(5, "kept neurons of the Table 3 / Table 2 cell", type=int)
    table_mask: float = setting(1.0, "mask share of the Table 3 / Table 2 cell", type=float)
    bootstrap: int = setting(
        1000, "bootstrap resamples over test images (0: no intervals)", type=int
    )
    baselines: tuple[str, ...] = setting(
        (),
        "comma-separated keep rules trained on each class's probe images: vit-slim (ViT-Slim's "
        "soft masks on the FFN neurons, CE + L1)",
        parse=names,
    )

    def __post_init__(self):
        for name in ("keep", "mask", "depth"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.keep or min(self.keep) < 1:
            raise InputError(
                f"{option('keep')}: expected positive neuron counts, got {list(self.keep)}"
            )
        if not self.mask or any(not 0 <= p <= 1 for p in self.mask):
            raise InputError(f"{option('mask')}: expected shares in [0, 1], got {list(self.mask)}")
        if self.depth is not None and (not self.depth or min(self.depth) < 1):
            raise InputError(
                f"{option('depth')}: expected layer counts >= 1, got {list(self.depth)}"
            )
        if not 0 < self.probe_fraction < 1:
            raise InputError(
                f"{option('probe_fraction')}: expected a number in (0, 1), got "
                f"{self.probe_fraction}"
            )
        if self.aggregate not in AGGREGATES:
            raise InputError(
                f"{option('aggregate')}: expected one of {AGGREGATES}, got {self.aggregate!r}"
            )
        object.__setattr__(self, "baselines", tuple(dict.fromkeys(self.baselines or ())))
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise InputError(
                f"{option('baselines')}: unknown {unknown}; expected some of {', '.join(BASELINES)}"
            )
        if self.bootstrap < 0:
            raise InputError(
                f"{option('bootstrap')}: expected a number of resamples >= 0, got {self.bootstrap}"
            )

    @property
    def table_cell(self) -> tuple[int, float]:
        """(t, p) of Table 3: the asked cell where the grid has it, else its first t, last p."""
        return (
            self.table_keep if self.table_keep in self.keep else self.keep[0],
            self.table_mask if self.table_mask in self.mask else self.mask[-1],
        )


def split_probe_test(
    images_by_class: Mapping[str, Sequence[str]], fraction: float = 0.8, seed: int = 0
) -> dict[str, str]:
    """``{image: "probe" | "test"}``: per class, a seeded shuffle of the sorted image ids, the
    first round(fraction x n) (at least 1, at most n - 1) probing, the rest testing."""
    if not 0 < fraction < 1:
        raise InputError(f"probe fraction: expected a number in (0, 1), got {fraction}")
    split = {}
    for name, images in images_by_class.items():
        images = sorted(images)
        if len(images) < 2:
            raise InputError(f"class {name}: needs at least 2 images to split, has {len(images)}")
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
        raise InputError(f"keep {t}: the paths have only K = {selections.shape[2]} per layer")
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
        raise InputError(f"keep {t}: the paths have only K = {selections.shape[2]} per layer")
    kept = []
    for l in range(selections.shape[1]):
        slot_modes = []
        for s in range(t):
            counts = Counter(selections[:, l, s].tolist())
            slot_modes.append(min(counts, key=lambda j: (-counts[j], j)))
        kept.append(sorted(set(slot_modes)))
    return kept


def prune_multipliers(
    image: str,
    seed: int,
    kept: Sequence[Sequence[int]],
    width: int | Sequence[int],
    p: float,
    depth: int,
) -> dict[int, torch.Tensor]:
    """{layer: (n_l,) 0/1 multiplier} for layers < depth: each non-kept neuron is zeroed with
    probability p (independent Bernoulli draws from a per-(seed, image, layer) generator)."""
    widths = per_layer(width, len(kept))
    out = {}
    for l in range(depth):
        draws = torch.rand(widths[l], generator=seeded_generator("mask", seed, image, l)) < p
        draws[list(kept[l])] = False
        out[l] = (~draws).double()
    return out


def probe_selections(records: Sequence[dict], method: str, images: Sequence[str]) -> np.ndarray:
    """(images, layers, K) path neurons of ``method`` for ``images``, from find records."""
    rows = {r["image"]: r["path"] for r in records if r["method"] == method}
    missing = [i for i in images if i not in rows]
    if missing:
        raise InputError(f"find run: no {method} path for probe images {missing[:3]}")
    array = np.array([rows[i] for i in images], dtype=np.int64)
    return array[:, :, None] if array.ndim == 2 else array


def pruning_metrics(
    correct: np.ndarray, probs: np.ndarray, classes: Sequence[str], draws: np.ndarray
) -> dict:
    """Top-1 accuracy and mean ground-truth probability over test images (``classes[i]`` is
    image i's class), with bootstrap 95 % intervals, and the mean of per-class mean probability."""
    folder = np.array(classes)
    class_prob = [probs[folder == c].mean() for c in sorted(set(folder.tolist()))]
    return {
        "accuracy": float(correct.mean()),
        "accuracy_ci": mean_interval(correct, draws),
        "mean_label_prob": float(probs.mean()),
        "mean_label_prob_ci": mean_interval(probs, draws),
        "class_mean_label_prob": float(np.mean(class_prob)),
    }


def paired_difference(a: tuple, b: tuple, draws: np.ndarray) -> dict:
    """Paired differences a - b of accuracy and probability over the same test images
    (``a``, ``b``: (correct, probs) arrays)."""
    out = {}
    for name, i in (("accuracy", 0), ("mean_label_prob", 1)):
        diff = a[i] - b[i]
        out[name] = float(diff.mean())
        out[f"{name}_ci"] = mean_interval(diff, draws)
    return out
