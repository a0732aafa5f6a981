"""Per-method summary statistics of a run's records (what ``neuronpath summary`` prints)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from .records import group_by


def summarize(records: Iterable[dict]) -> dict[str, dict]:
    """Per method: images, mean / median final JAS, top-1 accuracy and mean label probability.

    When a run has both the JAS and the Activation path, also the share of images whose JAS
    path scores higher than their Activation path.
    """
    by_method = group_by(records)
    out = {}
    for method, rows in by_method.items():
        scores = [r["jas"] for r in rows]
        out[method] = {"images": len(rows), "mean_jas": statistics.fmean(scores),
                       "median_jas": statistics.median(scores),
                       "accuracy": statistics.fmean(r["pred"] == r["label"] for r in rows),
                       "mean_label_prob": statistics.fmean(r["prob"] for r in rows)}
    if "jas" in by_method and "activation" in by_method:
        act = {r["image"]: r["jas"] for r in by_method["activation"]}
        pairs = [(r["jas"], act[r["image"]]) for r in by_method["jas"] if r["image"] in act]
        if pairs:
            out["jas"]["share_above_activation"] = statistics.fmean(j > a for j, a in pairs)
    return out
