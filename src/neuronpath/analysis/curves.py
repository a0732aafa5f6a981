"""MIB's faithfulness curves over whole rankings (Mueller et al. 2025), for units instead of
edges: per layer the top k % of a method's ranked units are kept, every other unit of every
layer is ablated, and

    f(k) = (m(kept k) - m(none kept)) / (m(clean) - m(none kept)),

each m the mean of a metric over images.  CPR is the area under f(k) and CMD the area under
|1 - f(k)|, both by the trapezoid rule over x = k / 100 (the fraction of each layer's units
kept) at the points of :data:`KS`, so x runs from 0.001 to 1 and a curve that is 1 everywhere
has CPR = 0.999 and CMD = 0.  Higher CPR: the ranking's top carries more of the model's
behaviour; lower CMD: keeping it reproduces the model more closely.

As MIB does (its ``absolute`` flag), CPR ranks each layer's units by their signed score and
CMD by |score|: a unit that pushes the metric down is part of what reproduces the model, so
CMD keeps it, while CPR asks which units push the metric up.  Where a method's scores are
all non-negative the two rankings are one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .bootstrap import percentile_interval
from .faithfulness import normalised

KS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)  # percent of a layer's units


def kept_count(width: int, k: float) -> int:
    """How many of a layer's ``width`` units the top k % is: ceil(k % of width), at least
    one (the one-unit end is a path)."""
    return max(1, min(width, math.ceil(round(k * width / 100, 9))))


def trapezoid(x: Sequence[float], y: Sequence[float]) -> float:
    """The area under y(x) by the trapezoid rule."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2).sum())


def cpr_cmd(f: Sequence[float], ks: Sequence[float] = KS) -> tuple[float, float]:
    """(CPR, CMD) of a curve f(k) at the points ``ks`` (percent), x = k / 100."""
    x = np.asarray(ks, dtype=np.float64) / 100
    f = np.asarray(f, dtype=np.float64)
    return trapezoid(x, f), trapezoid(x, np.abs(1 - f))


def curve_statistics(
    clean: np.ndarray,
    none: np.ndarray,
    kept: np.ndarray,
    draws: np.ndarray,
    ks: Sequence[float] = KS,
    kept_absolute: np.ndarray | None = None,
) -> dict:
    """f(k), CPR and CMD from per-image metric values -- ``clean`` and ``none`` (images,),
    ``kept`` (images, len(ks)) under the signed ranking and ``kept_absolute`` under the
    ranking by |score| (None: the same rows) -- with bootstrap 95 % intervals over images
    (``draws``: resampled image indices; none: no intervals): ``{"f": [...], "f_lo": [...],
    "f_hi": [...], "f_abs": [...], "f_abs_lo": [...], "f_abs_hi": [...], "cpr": {value, lo,
    hi}, "cmd": {value, lo, hi}}``; CPR is the area of ``f``, CMD of |1 - ``f_abs``|."""
    kept_absolute = kept if kept_absolute is None else kept_absolute
    out: dict = {}
    for key, rows in (("f", kept), ("f_abs", kept_absolute)):
        out[key] = normalised(rows, clean, none).tolist()
        out[f"{key}_lo"], out[f"{key}_hi"] = [None] * len(ks), [None] * len(ks)
    out["cpr"] = {"value": cpr_cmd(out["f"], ks)[0], "lo": None, "hi": None}
    out["cmd"] = {"value": cpr_cmd(out["f_abs"], ks)[1], "lo": None, "hi": None}
    if not len(draws):
        return out
    for key, rows, area, name in (("f", kept, 0, "cpr"), ("f_abs", kept_absolute, 1, "cmd")):
        fs = np.stack([normalised(rows[d], clean[d], none[d]) for d in draws])
        for i in range(len(ks)):
            interval = percentile_interval(fs[:, i]) or [None, None]
            out[f"{key}_lo"][i], out[f"{key}_hi"][i] = interval
        areas = np.array([cpr_cmd(row, ks)[area] for row in fs])
        out[name]["lo"], out[name]["hi"] = percentile_interval(areas) or [None, None]
    return out
