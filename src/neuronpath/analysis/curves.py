"""MIB's faithfulness curves over whole rankings (Mueller et al. 2025), for units instead of
edges: per layer the top k % of a method's ranked units are kept, every other unit of every
layer is ablated, and

    f(k) = (m(kept k) - m(none kept)) / (m(clean) - m(none kept)),

each m the mean of a metric over images.  CPR is the area under f(k) and CMD the area under
|1 - f(k)|, both by the trapezoid rule over x = k / 100 (the fraction of each layer's units
kept) at the points of :data:`KS`, so x runs from 0.001 to 1 and a curve that is 1 everywhere
has CPR = 0.999 and CMD = 0.  Higher CPR: the ranking's top carries more of the model's
behaviour; lower CMD: keeping it reproduces the model more closely.
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
) -> dict:
    """f(k), CPR and CMD from per-image metric values -- ``clean`` and ``none`` (images,),
    ``kept`` (images, len(ks)) -- with bootstrap 95 % intervals over images (``draws``:
    resampled image indices; none: no intervals): ``{"f": [...], "f_lo": [...], "f_hi":
    [...], "cpr": {value, lo, hi}, "cmd": {value, lo, hi}}``."""
    f = normalised(kept, clean, none)
    cpr, cmd = cpr_cmd(f, ks)
    out = {"f": f.tolist(), "f_lo": [None] * len(ks), "f_hi": [None] * len(ks)}
    out["cpr"] = {"value": cpr, "lo": None, "hi": None}
    out["cmd"] = {"value": cmd, "lo": None, "hi": None}
    if not len(draws):
        return out
    fs = np.stack([normalised(kept[d], clean[d], none[d]) for d in draws])
    for i in range(len(ks)):
        interval = percentile_interval(fs[:, i]) or [None, None]
        out["f_lo"][i], out["f_hi"][i] = interval
    areas = np.array([cpr_cmd(row, ks) for row in fs])
    for j, name in enumerate(("cpr", "cmd")):
        interval = percentile_interval(areas[:, j]) or [None, None]
        out[name]["lo"], out[name]["hi"] = interval
    return out
