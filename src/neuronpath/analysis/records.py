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


def layer_distribution(records: Iterable[dict], num_layers: int) -> list[int]:
    """How many of the per-image top knowledge neurons fall in each layer (Fig. 2's data)."""
    counts = Counter(layer for r in records if r["method"] == "knowledge"
                     for layer, _, _ in r["top"])
    return [counts.get(l, 0) for l in range(num_layers)]
