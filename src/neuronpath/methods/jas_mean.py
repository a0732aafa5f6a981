"""JAS from the reference mean: Alg. 1's layer-progressive search with the integral of Eq. 3
run from each unit's mean over ``find --reference``'s images instead of from zero.

A scaled unit moves along u = m + alpha (h - m) (the official left grid by default; the rest of
its layer frozen at clean values, as in :mod:`.jas`), and the values that enter Eq. 2 are
h - m, so candidate i of layer t scores

    S_t[i] = (h_t[i] - m_t[i] + sum_{l<t} (h_l[p_l] - m_l[p_l]))
             * sum_k w_k (g_t[i] + sum_{l<t} g_l[p_l])|_{alpha_k}

A path is then scored by what it adds over the model's typical state -- the counterfactual that
mean ablation uses -- so a unit that is large on every image (a register-like neuron) gains
nothing from its size alone.  TopK (Alg. 3) as in :mod:`.jas` with every chosen unit in both
sums.  The run's final JAS of every path stays the official one (from zero), so the methods of
a run stay comparable.  Cost: as the JAS search.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import MethodOptions, MethodOutput, PathMethod, reference_of
from .jas import JASOptions, jas_output


@dataclass(frozen=True)
class JASMeanOptions(MethodOptions):
    """No options of its own; it needs ``find --reference``."""

    @property
    def needs_reference(self) -> bool:
        return True


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    means = reference_of(clean, "jas-mean")
    return jas_output(adapter, pixels, clean, config, k, JASOptions(), baseline=means)


METHOD = PathMethod(
    "jas-mean",
    "JAS path from the reference mean: Alg. 1 with Eq. 3's integral run from each unit's mean "
    "over find --reference's images (u = m + alpha (h - m))",
    _method,
    options=JASMeanOptions,
    title="JAS-mean path",
    units=("neurons",),
    undefined="its baseline is a mean of neuron values",
)
