"""How well a method recovers a planted chain (``neuronpath benchmark``): per planted layer the
hit rate (the method's path unit is the planted unit; with K units per layer, among them), the
whole path recovered, the planted unit's rank in the method's own ranking of its layer (1 =
its top; ties go to the lower index, as the method's own ``top_k``), the ROC area of the
method's scores against the planted unit **within each layer** (P(the planted unit outscores
another unit of its layer), ties counted half; ``all`` is the mean of the layers' areas, never
a pooled area: raw scores are not comparable across layers), and how often each distractor is
picked (per layer, and per family over its layers).

Intervals are 95 %: **Wilson** score intervals for rates (hits, picks: a bootstrap interval of a
rate of 0 or 1 collapses to a point), bootstrap percentile intervals over images for means
(rank, ROC area).

A planted neuron may stand for several units of the run's layer (SAE latents whose decoder
direction is dominated by it, :func:`neuronpath.experiments.benchmark.latents_standing_for`):
then a hit is a path unit among them, the rank is the best-ranked of them, and the ROC area
counts all of them as positives.  A layer where no unit stands for the planted neuron has hit
rate 0 and no rank or ROC row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .bootstrap import mean_interval

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a rate ``successes / n`` (None for n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [float(max(0.0, centre - half)), float(min(1.0, centre + half))]


def planted_ranks(scores: np.ndarray, unit: int) -> np.ndarray:
    """1-based rank of ``unit`` in each row's descending order of ``scores`` (images, n); a
    tie goes to the lower index."""
    own = scores[:, unit : unit + 1]
    above = (scores > own).sum(1)
    tied_before = (scores[:, :unit] == own).sum(1)
    return 1 + above + tied_before


def roc_area(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Per row of ``scores`` (images, n), P(a positive outscores a negative), ties counted
    half; ``positive`` (n,) marks the positives."""
    pos, neg = scores[:, positive], scores[:, ~positive]
    greater = (pos[:, :, None] > neg[:, None, :]).mean((1, 2))
    equal = (pos[:, :, None] == neg[:, None, :]).mean((1, 2))
    return greater + 0.5 * equal


def first_rank(scores: np.ndarray, units: Sequence[int]) -> np.ndarray:
    """1-based rank of the best-ranked of ``units`` in each row of ``scores`` (images, n)."""
    return np.min([planted_ranks(scores, u) for u in units], axis=0)


def recovery(
    paths: np.ndarray,
    planted: Mapping[int, int | Sequence[int]],
    distractors: Sequence[Mapping],
    scores: np.ndarray | None,
    widths: Sequence[int],
    draws: np.ndarray,
) -> list[dict]:
    """Rows ``{statistic, layer, value, lo, hi}`` for one method: ``paths`` (images, layers,
    K), ``planted`` {layer: the planted unit, or the units standing for it}, ``distractors``
    [{kind, layer, neuron}, plus ``units`` standing for the neuron where they differ],
    ``scores`` (images, layers, widest) or None (no rank or ROC rows)."""
    rows = []
    planted = {l: [int(u) for u in np.atleast_1d(units)] for l, units in planted.items()}

    def add(statistic, layer, per_image, rate: bool = False):
        per_image = np.asarray(per_image, dtype=np.float64)
        if rate:
            interval = wilson_interval(float(per_image.sum()), len(per_image))
        else:
            interval = mean_interval(per_image, draws) if len(draws) else None
        interval = interval or [None, None]
        rows.append(
            {
                "statistic": statistic,
                "layer": layer,
                "value": float(per_image.mean()),
                "lo": interval[0],
                "hi": interval[1],
                "n": len(per_image),  # observations: images, or (image, layer) pairs
            }
        )

    def among(l, units) -> np.ndarray:
        return np.isin(paths[:, l, :], units).any(1)

    layers = sorted(planted)
    hits = {l: among(l, planted[l]) for l in layers}
    for l in layers:
        add("hit", l, hits[l], rate=True)
    add("hit", "all", np.all([hits[l] for l in layers], axis=0), rate=True)
    families: dict[str, list] = {}
    for d in distractors:
        picked = among(d["layer"], d.get("units", [d["neuron"]]))
        add(f"pick:{d['kind']}", d["layer"], picked, rate=True)
        families.setdefault(d["kind"], []).append(picked)
    for kind, picks in families.items():  # the share of (image, layer) pairs it won
        add(f"pick:{kind}", "all", np.concatenate(picks), rate=True)
    if scores is None:
        return rows
    found = [l for l in layers if planted[l]]
    ranks = {l: first_rank(scores[:, l, : widths[l]], planted[l]) for l in found}
    for l in found:
        add("rank", l, ranks[l])
    if found == layers:
        add("rank", "all", np.mean([ranks[l] for l in layers], axis=0))
    areas = {}
    for l in found:
        positive = np.isin(np.arange(widths[l]), planted[l])
        areas[l] = roc_area(scores[:, l, : widths[l]], positive)
        add("auc", l, areas[l])
    if found:  # the mean of the layers' areas, per image
        add("auc", "all", np.mean([areas[l] for l in found], axis=0))
    return rows
