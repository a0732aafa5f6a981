"""Helpers over record lists (one dict per image and method, as ``find`` and ``evaluate`` write)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable


def group_by(records: Iterable[dict], key: str = "method") -> dict:
    """``{value: [records with record[key] == value]}``, in the order values first appear."""
    groups: dict = {}
    for record in records:
        groups.setdefault(record[key], []).append(record)
    return groups


def methods_with_top(records: Iterable[dict]) -> list[str]:
    """The methods whose records keep each image's top neurons (a ``top`` list of (layer,
    neuron, score); ``knowledge`` does)."""
    return list(dict.fromkeys(r["method"] for r in records if "top" in r))


def layer_distribution(records: Iterable[dict], num_layers: int, method: str) -> list[int]:
    """How many of the per-image top neurons of ``method`` fall in each layer (Fig. 2's data,
    for ``knowledge``)."""
    counts = Counter(
        layer for r in records if r["method"] == method for layer, _, _ in r.get("top", ())
    )
    return [counts.get(l, 0) for l in range(num_layers)]
