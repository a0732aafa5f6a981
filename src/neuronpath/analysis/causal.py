"""Causal checks of paths (beyond the paper): what intervening on a path does to the
ground-truth probability P, per image, as dP/P = P_edit / P - 1.

* **path removed**: every path neuron zeroed at once (the paper's removal);
* **each removed**: one layer's path neuron(s) zeroed alone, for every layer;
* **only the path**: every neuron of the edited layers zeroed *except* the path's -- how much of
  the decision the path carries by itself.

Means over images with bootstrap 95 % intervals; images whose clean P is 0 are left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_draws, mean_interval
from .records import group_by


def method_causal_metrics(rows: Sequence[dict], bootstrap: int = 1000, seed: int = 0) -> dict:
    """Metrics of one method's causal records (see the module docstring)."""
    base = np.array([r["base_prob"] for r in rows], dtype=np.float64)
    valid = base > 0
    base = base[valid]
    kept = [r for r, ok in zip(rows, valid) if ok]
    removed = np.array([r["path_removed_prob"] for r in kept]) / base - 1
    each = np.array([r["each_removed_prob"] for r in kept]) / base[:, None] - 1  # (images, L)
    only = np.array([r["only_path_prob"] for r in kept]) / base - 1
    labels = np.array([r["label"] for r in rows])
    draws = (
        bootstrap_draws(len(kept), bootstrap, seed)
        if bootstrap and len(kept)
        else np.zeros((0, 0), int)
    )
    per_layer = each.mean(axis=0)
    strongest = int(np.argmin(per_layer)) if per_layer.size else None
    return {
        "images": len(rows),
        "excluded": int((~valid).sum()),
        "path_removed": float(removed.mean()),
        "path_removed_ci": mean_interval(removed, draws),
        "each_removed_mean": float(each.mean()),
        "each_removed_mean_ci": mean_interval(each.mean(axis=1), draws),
        "each_removed_per_layer": per_layer.tolist(),
        "strongest_layer": strongest,
        "strongest_layer_dp": float(per_layer[strongest]) if strongest is not None else None,
        "only_path": float(only.mean()),
        "only_path_ci": mean_interval(only, draws),
        "only_path_accuracy": float(np.mean([r["only_path_pred"] == r["label"] for r in rows])),
        "accuracy": float(np.mean([r["base_pred"] == r["label"] for r in rows])),
        "labels": len(set(labels.tolist())),
    }


def causal_metrics(
    records: Sequence[dict], bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict]:
    """``{method: method_causal_metrics}`` over causal records of several methods."""
    return {
        m: method_causal_metrics(rows, bootstrap, seed) for m, rows in group_by(records).items()
    }
