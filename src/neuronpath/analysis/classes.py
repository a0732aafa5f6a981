"""Class-level analysis of neuron paths (§4.3, App. D; docs/official-code.md#class-statistics).

* **utilisation matrix** M_c in R^{L x n} (App. D.2): M_c[l, j] = the share of the class's
  selections at layer l that picked neuron j (each row sums to 1);
* **class similarity** (Eq. 21): cosine similarity of the flattened M_c, with each class's most
  and least similar classes (the top / bottom 5 % of the other classes);
* a **group coherence** test (beyond the paper): within-group minus between-group mean
  similarity for a given grouping of classes, with a permutation p-value;
* **intra-class clustering** per layer (Finding 3): how often an image's neuron equals its
  class's modal neuron (leave-one-out), against 1/n and against the same statistic with class
  labels shuffled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, option


@dataclass
class ClassPaths:
    """Per-class paths of one method: ``paths[c]`` is (images, layers, K) neuron indices.

    ``width`` is the widest layer's FFN width: per-layer arrays are laid out (layers, width),
    and in hierarchical models the neurons a narrower layer lacks simply never occur (zero
    counts), so a flattened utilisation matrix is the concatenation of the per-layer ones.
    ``widths`` are the per-layer widths (default: ``width`` for every layer).
    """

    classes: list[int]
    names: list[str]
    paths: dict[int, np.ndarray]
    images: dict[int, list[str]]
    width: int
    widths: list[int] | None = None

    def layer_widths(self) -> list[int]:
        return list(self.widths) if self.widths else [self.width] * self.num_layers

    @property
    def num_layers(self) -> int:
        return next(iter(self.paths.values())).shape[1]


def class_paths(records: Sequence[dict], method: str, width: int | Sequence[int]) -> ClassPaths:
    """Group a find run's records of ``method`` by ground-truth class (``width``: the FFN
    width, or one per layer)."""
    by_class: dict[int, list[dict]] = {}
    names: dict[int, str] = {}
    for r in records:
        if r["method"] == method:
            by_class.setdefault(r["label"], []).append(r)
            names[r["label"]] = r.get("label_name") or str(r["label"])
    if not by_class:
        raise InputError(f"{option('method')}: the run has no records of {method!r}")
    classes = sorted(by_class)
    paths = {}
    for c in classes:
        array = np.array([r["path"] for r in by_class[c]], dtype=np.int64)
        paths[c] = array.reshape(array.shape[0], array.shape[1], -1)
    widths = None if isinstance(width, int) else [int(w) for w in width]
    return ClassPaths(
        classes,
        [names[c] for c in classes],
        paths,
        {c: [r["image"] for r in by_class[c]] for c in classes},
        width if widths is None else max(widths),
        widths,
    )


def neuron_counts(cp: ClassPaths) -> np.ndarray:
    """(classes, layers, n) counts of how often each neuron was selected."""
    counts = np.zeros((len(cp.classes), cp.num_layers, cp.width), dtype=np.int64)
    for i, c in enumerate(cp.classes):
        p = cp.paths[c]
        for l in range(cp.num_layers):
            np.add.at(counts[i, l], p[:, l].ravel(), 1)
    return counts


def utilisation(counts: np.ndarray) -> np.ndarray:
    """M_c = counts / selections per layer (App. D.2); rows sum to 1."""
    totals = counts.sum(axis=2, keepdims=True)
    return counts / np.maximum(totals, 1)


def modal_neurons(counts: np.ndarray) -> np.ndarray:
    """(classes, layers) most-selected neuron (lowest index on ties)."""
    return counts.argmax(axis=2)


def kde_mode(values: np.ndarray, grid: int = 1000) -> float:
    """The official Fig. 4 line: mode of a Gaussian KDE (scipy, default bandwidth) on ``grid``
    points between min and max.  Degenerate inputs (all equal, which crashes the official
    code) return that value."""
    from scipy.stats import gaussian_kde

    values = np.asarray(values, dtype=float)
    if values.size < 2 or np.ptp(values) == 0:
        return float(values[0])
    xs = np.linspace(values.min(), values.max(), grid)
    return float(xs[np.argmax(gaussian_kde(values)(xs))])


def cosine_similarity(matrices: np.ndarray) -> np.ndarray:
    """Eq. 21: cosine similarity of the flattened utilisation matrices, (classes, classes)."""
    flat = matrices.reshape(matrices.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=1, keepdims=True)
    unit = flat / np.where(norms == 0, 1, norms)
    return unit @ unit.T


def most_and_least_similar(similarity: np.ndarray, fraction: float = 0.05) -> list[dict]:
    """Per class, the ``fraction`` most and least similar *other* classes (at least one).

    The diagonal is excluded explicitly; ties are broken by class order (lower index first),
    so the lists are deterministic.  Returns, per class, ``{"top": [(j, s), ...],
    "bottom": [(j, s), ...]}`` with ``top`` in descending and ``bottom`` in ascending order of
    similarity.
    """
    n = similarity.shape[0]
    count = max(1, int(round(fraction * (n - 1)))) if n > 1 else 0
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        top = sorted(others, key=lambda j: (-similarity[i, j], j))[:count]
        bottom = sorted(others, key=lambda j: (similarity[i, j], j))[:count]
        out.append(
            {
                "top": [(j, float(similarity[i, j])) for j in top],
                "bottom": [(j, float(similarity[i, j])) for j in bottom],
            }
        )
    return out


def group_coherence(
    similarity: np.ndarray, groups: Sequence[str], permutations: int = 10000, seed: int = 0
) -> dict:
    """Mean within-group minus mean between-group similarity (off-diagonal pairs), and the
    one-sided permutation p-value of that difference under shuffled group labels."""
    groups = np.asarray(groups)
    n = len(groups)
    if n != similarity.shape[0]:
        raise InputError(f"groups: {n} labels for {similarity.shape[0]} classes")
    if len(set(groups.tolist())) < 2:
        raise InputError("groups: need at least two groups")
    iu = np.triu_indices(n, k=1)
    values = similarity[iu]

    def statistic(labels):
        same = labels[iu[0]] == labels[iu[1]]
        return values[same].mean() - values[~same].mean(), values[same].mean(), values[~same].mean()

    observed, within, between = statistic(groups)
    rng = np.random.default_rng(seed)
    null = np.array([statistic(rng.permutation(groups))[0] for _ in range(permutations)])
    p = (1 + np.sum(null >= observed - 1e-12)) / (1 + permutations)
    return {
        "within_mean": float(within),
        "between_mean": float(between),
        "difference": float(observed),
        "p_value": float(p),
        "permutations": permutations,
        "null_mean": float(null.mean()) if permutations else None,
    }


def intra_class_clustering(cp: ClassPaths, shuffles: int = 20, seed: int = 0) -> dict:
    """Per layer: the share of images whose (first-ranked) neuron equals the modal neuron of the
    *other* images of its class (leave-one-out), against 1/n and against the same statistic
    with class labels shuffled (which keeps each neuron's overall popularity)."""
    labels = np.concatenate([[i] * len(cp.paths[c]) for i, c in enumerate(cp.classes)])
    neurons = np.concatenate([cp.paths[c][:, :, 0] for c in cp.classes])  # (images, layers)

    def share(lab):
        hits = np.zeros(neurons.shape[1])
        counted = 0
        for c in np.unique(lab):
            rows = neurons[lab == c]
            if len(rows) < 2:
                continue  # no "other images" to vote
            for l in range(neurons.shape[1]):
                counts = np.bincount(rows[:, l], minlength=cp.width)
                # v is the leave-one-out mode (lowest index on ties) iff, with its own vote
                # removed, no lower index has as many votes and no higher index has more
                before = np.concatenate([[-1], np.maximum.accumulate(counts)[:-1]])
                after = np.concatenate([np.maximum.accumulate(counts[::-1])[::-1][1:], [-1]])
                v = rows[:, l]
                hits[l] += np.sum((before[v] < counts[v] - 1) & (after[v] <= counts[v] - 1))
            counted += len(rows)
        return hits / max(counted, 1)

    observed = share(labels)
    rng = np.random.default_rng(seed)
    shuffled = (
        np.mean([share(rng.permutation(labels)) for _ in range(shuffles)], axis=0)
        if shuffles
        else np.full_like(observed, np.nan)
    )
    widths = cp.layer_widths()
    chance = 1 / cp.width if len(set(widths)) == 1 else float(np.mean([1 / n for n in widths]))
    return {
        "share_modal": observed.tolist(),
        "shuffled_labels": shuffled.tolist(),
        "chance": chance,
        "chance_per_layer": [1 / n for n in widths],
        "shuffles": shuffles,
    }


def group_labels(names: Sequence[str], groups: Mapping[str, str]) -> list[str]:
    missing = [n for n in names if n not in groups]
    if missing:
        raise InputError(
            f"{option('groups')}: no group for the run's classes {missing[:5]}; expected lines "
            f"'class<TAB>group' with the run's classes first"
        )
    return [groups[n] for n in names]
