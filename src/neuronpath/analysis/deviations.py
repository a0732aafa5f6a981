"""Metrics of the removal / enhancement experiment (§4.2, Eq. 12-19;
docs/official-code.md#removal-and-enhancement).

Per method and operation (remove, enhance):

* **accuracy deviation**: top-1 accuracy after the edit minus before, in percentage points
  (Eq. 15-19);
* **probability deviation** dP/P = P_edit / P - 1 of the ground-truth probability (Eq. 12),
  aggregated two ways: per image (mean and median over images, Eq. 13-14) and the official way (mean
  within each class, then mean and median over the class means -- what Fig. 3 and the paper's
  "median" are, docs/official-code.md#removal-and-enhancement);
* bootstrap 95 % confidence intervals over images for each of these.

Images whose unmodified probability is exactly 0 have no dP/P; they are counted and left out of
the probability statistics (never of the accuracy).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_draws, percentile_interval
from .records import group_by

STATS = ("accuracy_deviation", "dp_mean", "dp_median", "dp_class_mean", "dp_class_median")


def _stats(labels, base_pred, base_prob, pred, prob, class_index, n_classes) -> dict[str, float]:
    accuracy_before = np.mean(base_pred == labels)
    accuracy_after = np.mean(pred == labels)
    valid = base_prob > 0
    dp = prob[valid] / base_prob[valid] - 1
    sums = np.bincount(class_index[valid], weights=dp, minlength=n_classes)
    counts = np.bincount(class_index[valid], minlength=n_classes)
    class_means = sums[counts > 0] / counts[counts > 0]
    nan = float("nan")
    return {
        "accuracy_deviation": 100 * float(accuracy_after - accuracy_before),
        "accuracy_after": float(accuracy_after),
        "dp_mean": float(dp.mean()) if dp.size else nan,
        "dp_median": float(np.median(dp)) if dp.size else nan,
        "dp_class_mean": float(class_means.mean()) if class_means.size else nan,
        "dp_class_median": float(np.median(class_means)) if class_means.size else nan,
        "dp_excluded": int((~valid).sum()),
    }


def method_metrics(
    rows: Sequence[dict], ops: Sequence[str], bootstrap: int = 1000, seed: int = 0
) -> dict:
    """Metrics of one method's evaluation records (see the module docstring)."""
    labels = np.array([r["label"] for r in rows])
    base_pred = np.array([r["base_pred"] for r in rows])
    base_prob = np.array([r["base_prob"] for r in rows], dtype=np.float64)
    classes, class_index = np.unique(labels, return_inverse=True)
    jas = [r.get("jas") for r in rows]
    out = {
        "images": len(rows),
        "classes": len(classes),
        "mean_jas": float(np.mean(jas)) if jas and None not in jas else None,
        "accuracy": float(np.mean(base_pred == labels)),
    }
    draws = bootstrap_draws(len(rows), bootstrap, seed) if bootstrap else None
    for op in ops:
        pred = np.array([r[f"{op}_pred"] for r in rows])
        prob = np.array([r[f"{op}_prob"] for r in rows], dtype=np.float64)
        stats = _stats(labels, base_pred, base_prob, pred, prob, class_index, len(classes))
        if draws is not None:
            samples = np.array(
                [
                    [
                        _stats(
                            labels[d],
                            base_pred[d],
                            base_prob[d],
                            pred[d],
                            prob[d],
                            class_index[d],
                            len(classes),
                        )[k]
                        for k in STATS
                    ]
                    for d in draws
                ]
            )
            for j, key in enumerate(STATS):
                stats[f"{key}_ci"] = percentile_interval(samples[:, j])
        out[op] = stats
    return out


def all_metrics(
    records: Sequence[dict], ops: Sequence[str], bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """``{method: method_metrics}`` over evaluation records of several methods."""
    return {m: method_metrics(rows, ops, bootstrap, seed) for m, rows in group_by(records).items()}


def class_mean_deviations(rows: Sequence[dict], op: str) -> np.ndarray:
    """Per-class mean of dP/P (the official Fig. 3 boxes)."""
    by_class: dict[int, list[float]] = {}
    for r in rows:
        if r["base_prob"] > 0:
            by_class.setdefault(r["label"], []).append(r[f"{op}_prob"] / r["base_prob"] - 1)
    return np.array([np.mean(v) for _, v in sorted(by_class.items())])
