"""The bootstrap over images: resample indices once, read percentile intervals off them."""

from __future__ import annotations

import numpy as np


def bootstrap_draws(n: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, n) indices drawn with replacement from range(n), seeded."""
    return np.random.default_rng(seed).integers(0, n, (resamples, n))


def percentile_interval(samples: np.ndarray) -> list[float] | None:
    """The 95 % percentile interval [2.5 %, 97.5 %] of the finite ``samples``; None if none."""
    finite = np.asarray(samples)[np.isfinite(samples)]
    if not finite.size:
        return None
    return [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]


def mean_interval(values: np.ndarray, draws: np.ndarray) -> list[float] | None:
    """Bootstrap 95 % interval of the mean of ``values`` over the resamples ``draws``."""
    if not len(draws):
        return None
    return percentile_interval(values[draws].mean(axis=1))
