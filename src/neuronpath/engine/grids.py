"""Quadrature grids over the scaling factor alpha in [0, 1] (the integral of Eq. 2).

Every grid is a set of points alpha_k with weights w_k summing to 1, so that
    integral_0^1 f(alpha) d alpha  ~=  sum_k w_k f(alpha_k).

``left`` is what the authors' code uses (alpha_k = k/m, k = 0..m-1;
docs/official-code.md#jas-search) and is the default.  ``right`` is the paper's Eq. 3 (k = 1..m).
The others are better quadratures offered for users who do not need numbers comparable with the
paper."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError, option

GRIDS = ("left", "right", "midpoint", "trapezoid", "gauss-legendre")

# Named (rule, m) settings. ``fast``: the fewest points at which a rule kept the converged
# integral's paths at least as often as the official grid (left, m = 20) with 95 % confidence,
# on 100 images of the shared model: half the official cost, and the converged paths on all 100
# where the official grid kept 92 (docs/results/imagenet20-vit-s12/alphas.md, every rule and m).
PRESETS = {"fast": ("gauss-legendre", 10)}
OFFICIAL_GRID = ("left", 20)  # the released code's rule and steps: every default


@dataclass(frozen=True)
class AlphaGrid:
    """Points and weights of one quadrature rule on [0, 1]."""

    name: str
    points: tuple[float, ...]
    weights: tuple[float, ...]

    @property
    def steps(self) -> int:
        return len(self.points)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "steps": self.steps,
            "points": list(self.points),
            "weights": list(self.weights),
        }


def alpha_grid(name: str = "left", steps: int = 20) -> AlphaGrid:
    """Build the named grid with ``steps`` points (m in the paper)."""
    if name not in GRIDS:
        raise InputError(
            f"{option('alphas')}: unknown grid {name!r}; expected one of {', '.join(GRIDS)}"
        )
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"{option('steps')}: expected a positive integer, got {steps!r}")
    m = steps
    k = np.arange(m, dtype=np.float64)
    if name == "left":
        points, weights = k / m, np.full(m, 1.0 / m)
    elif name == "right":
        points, weights = (k + 1) / m, np.full(m, 1.0 / m)
    elif name == "midpoint":
        points, weights = (k + 0.5) / m, np.full(m, 1.0 / m)
    elif name == "trapezoid":
        if m < 2:
            raise InputError(f"{option('steps')}: the trapezoid grid needs at least 2 points")
        points = k / (m - 1)
        weights = np.full(m, 1.0 / (m - 1))
        weights[[0, -1]] /= 2
    else:  # gauss-legendre on [-1, 1] mapped to [0, 1]
        x, w = np.polynomial.legendre.leggauss(m)
        points, weights = (x + 1) / 2, w / 2
    return AlphaGrid(name, tuple(float(p) for p in points), tuple(float(w) for w in weights))
