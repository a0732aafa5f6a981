"""Ablation, one definition for the methods that *select* by it and the study that *judges* by
it: what an ablated unit takes, the edit of a path kept alone or removed, and the selection
criterion a method's choice was made by.

* **Kinds** (:data:`ABLATIONS`): ``zero``; ``mean``, each unit's mean over reference images;
  ``resample``, another image's values.  A method may select with ``mean`` or ``zero``
  (:data:`SELECTABLE`).  Resample is judged as the same criterion as mean (:data:`FAMILY`): its
  donors average to the mean, so a path chosen by mean ablation is not tested by it.
* **The edit** (:func:`path_edit`): with ``on`` the path's units of a layer (a 0/1 mask, or a
  soft choice), a *kept* row keeps only them and ablates every other unit of the layer (the
  path is sufficient: F(only the path kept)), a *removed* row ablates them alone (necessary:
  F(path ablated)).  ``causal`` and ``learned`` score candidates with exactly these edits, and
  the faithfulness study's necessity and sufficiency curves are made of them.
* **Criteria** (:func:`selection_criterion`, :func:`own_criterion`): a method that chooses by an
  intervention records (ablation, statistic, metric, reference); a judging row of the same
  ablation family and the same metric family is its own criterion.  The metrics ``prob`` and
  ``logit`` (the selection objectives, Eq. 3's F) are one family, the target's output;
  ``logit-diff`` and ``kl`` are judged apart (no method selects by them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

ABLATIONS = ("zero", "mean", "resample")
SELECTABLE = ("mean", "zero")
FAMILY = {"zero": "zero", "mean": "mean", "resample": "mean"}
STATISTICS = ("both", "necessity", "sufficiency")
SIDES = {"both": ("removed", "kept"), "necessity": ("removed",), "sufficiency": ("kept",)}
METRIC_FAMILY = {"prob": "target", "logit": "target", "logit-diff": "logit-diff", "kl": "kl"}


def path_edit(on: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's edit of each row, (multiplier, ablated), each (rows, n), for
    :func:`~neuronpath.engine.interventions.ablate_neurons`: where ``keep`` (rows,) holds, only
    the units ``on`` (rows, n; 0/1 or a soft weight) keep their value and the rest take the
    ablated value; elsewhere the units ``on`` alone are ablated."""
    on = on.to(torch.float64) if not on.is_floating_point() else on
    kept = torch.where(keep.to(on.device)[:, None], on, 1 - on)
    return kept, 1 - kept


def selection_criterion(
    ablation: str, statistic: str, metric: str, reference: str | None = None
) -> dict:
    """What a method that chooses by an intervention selected on: the ablation kind, the
    statistic (``both``: kept - removed; ``necessity``; ``sufficiency``), the metric F (the
    run's objective) and, for mean ablation, the digest of the reference images."""
    return {
        "ablation": ablation,
        "statistic": statistic,
        "metric": metric,
        "reference": reference if ablation == "mean" else None,
    }


def own_criterion(criterion: Mapping | None, ablation: str, metric: str) -> bool:
    """Whether judging by ``ablation`` and ``metric`` is the ``criterion`` a method selected
    on (same ablation family, resample counting as mean, and same metric family)."""
    if not criterion:
        return False
    return FAMILY[ablation] == FAMILY[criterion["ablation"]] and METRIC_FAMILY.get(
        metric, metric
    ) == METRIC_FAMILY.get(criterion["metric"], criterion["metric"])


def own_rule(selection: Mapping[str, Mapping]) -> Callable[[str, str, str], bool]:
    """``own(method, ablation, metric)``: whether that judging row is the criterion ``method``
    selected on, given a run's ``selection`` (``{method: criterion}``; methods absent from it
    chose by no intervention)."""

    def own(method: str, ablation: str, metric: str) -> bool:
        return own_criterion(selection.get(method), ablation, metric)

    return own
