"""Per-method summary statistics of a run's records (what ``neuronpath summary`` prints)."""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from .records import group_by


def summarize(records: Iterable[dict]) -> dict[str, dict]:
    """Per method: images, mean / median final JAS, top-1 accuracy and mean label probability;
    for the run's first method, ``share_above[other]``: the share of images where its path's
    final JAS is higher than each other method's.
    """
    by_method = group_by(records)
    out = {}
    for method, rows in by_method.items():
        scores = [r["jas"] for r in rows]
        out[method] = {
            "images": len(rows),
            "mean_jas": statistics.fmean(scores),
            "median_jas": statistics.median(scores),
            "accuracy": statistics.fmean(r["pred"] == r["label"] for r in rows),
            "mean_label_prob": statistics.fmean(r["prob"] for r in rows),
        }
    first, *others = by_method or [None]
    for other in others:
        theirs = {r["image"]: r["jas"] for r in by_method[other]}
        pairs = [(r["jas"], theirs[r["image"]]) for r in by_method[first] if r["image"] in theirs]
        if pairs:
            out[first].setdefault("share_above", {})[other] = statistics.fmean(
                a > b for a, b in pairs
            )
    return out
