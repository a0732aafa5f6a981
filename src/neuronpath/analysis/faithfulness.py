"""Faithfulness as circuit researchers measure it: metrics of an edited output, normalised
necessity and sufficiency curves, their areas, and the reference statistics ablations need.

* **Metrics** of a row's logits against the clean pass of its image: ``prob`` (softmax
  probability of the target), ``logit`` (its logit), ``logit-diff`` (its logit minus the logit
  of the strongest *other* class on the clean pass) and ``kl`` (KL(clean || edited) over all
  classes).
* **Normalised faithfulness** of an edit, f = (m(edited) - m(all ablated)) / (m(clean) -
  m(all ablated)), with m averaged over images *before* the ratio (a ratio of means: a
  per-image ratio explodes where an image's clean and all-ablated values nearly agree).  By
  construction f = 1 for the clean model and 0 with every neuron of the path's layers ablated.
  The **necessity** curve ablates the path's neurons cumulatively, k = 0 .. L; the
  **sufficiency** curve keeps only the first k of them, every other neuron of those layers
  ablated.  Areas are the trapezoid mean over k.
The reference statistics ablations need (each unit's mean coordinates over reference images,
a bounded sample of activation levels per layer for the matched control's bins) are
:class:`~neuronpath.analysis.unitstats.UnitStats`, which the neuron atlas uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError, option
from .bootstrap import percentile_interval

METRICS = ("prob", "logit", "logit-diff", "kl")


def check_names(names: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """``names`` without duplicates, each one of ``allowed`` (the option is named ``what``)."""
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise InputError(
            f"{option(what)}: expected some of {', '.join(allowed)}, got "
            f"{', '.join(names) or 'none'}"
        )
    return names


def rival_classes(clean: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The strongest class other than the target on the clean pass, per image."""
    others = clean.double().clone()
    others[torch.arange(len(targets)), targets] = -torch.inf
    return others.argmax(-1)


def metric_values(
    logits: torch.Tensor, clean: torch.Tensor, targets: torch.Tensor, rivals: torch.Tensor
) -> dict[str, np.ndarray]:
    """Every metric of each row's ``logits`` (rows, classes), given the clean logits of the
    row's image (rows, classes), its target and its rival class (rows,)."""
    logits, clean = logits.double(), clean.double()
    rows = torch.arange(len(targets))
    log_p, log_clean = logits.log_softmax(-1), clean.log_softmax(-1)
    kl = (log_clean.exp() * (log_clean - log_p)).sum(-1)
    return {
        "prob": log_p[rows, targets].exp().numpy(),
        "logit": logits[rows, targets].numpy(),
        "logit-diff": (logits[rows, targets] - logits[rows, rivals]).numpy(),
        "kl": kl.clamp_min(0).numpy(),
    }


def change(metric: str, edited: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Per image, how an edit moved a metric: the relative change P'/P - 1 for ``prob`` (the
    paper's probability deviation), the difference for logits, and KL itself for ``kl``."""
    if metric == "prob":
        return edited / clean - 1
    if metric == "kl":
        return edited
    return edited - clean


def normalised(edited: np.ndarray, clean: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """f = (mean edited - mean ablated) / (mean clean - mean ablated) along the image axis 0
    (``edited`` may carry more axes: a curve over k)."""
    low = ablated.mean(0)
    span = clean.mean(0) - low
    with np.errstate(divide="ignore", invalid="ignore"):
        return (edited.mean(0) - low) / span


def curve(kind: str, edited: np.ndarray, clean: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """The normalised ``necessity`` or ``sufficiency`` curve over k = 0 .. L from per-image
    values (images, L + 1); its start is the clean model (1) or all ablated (0) by definition,
    so it is set, not left to rounding."""
    out = normalised(edited, clean, ablated)
    out[0] = 1.0 if kind == "necessity" else 0.0
    return out


def area(curve: np.ndarray) -> np.ndarray:
    """Trapezoid mean of a curve over k = 0 .. L (last axis)."""
    return (curve[..., 1:] + curve[..., :-1]).mean(-1) / 2


def metric_arrays(rows: list[dict], metric: str) -> dict:
    """Per-image arrays of one metric from a study's records (``rows``, one per image):
    clean, ablated, removed, enhanced, and the curves over k = 0 .. L (necessity starts at
    clean, sufficiency at all ablated)."""
    get = {
        key: np.array([r[metric][key] for r in rows])
        for key in ("clean", "ablated", "removed", "enhanced")
    }
    nec = np.array([r[metric]["necessity"] for r in rows])
    suf = np.array([r[metric]["sufficiency"] for r in rows])
    return {
        **get,
        "metric": metric,
        "necessity": np.concatenate([get["clean"][:, None], nec], axis=1),
        "sufficiency": np.concatenate([get["ablated"][:, None], suf], axis=1),
    }


def statistics(values: Mapping[str, np.ndarray], draws: np.ndarray) -> dict[str, dict]:
    """The statistics of one (method, ablation, metric): per-image arrays ``clean``,
    ``removed``, ``enhanced``, ``ablated`` (images,) and the ``necessity`` / ``sufficiency``
    curves (images, L + 1) -> ``{statistic: {value, lo, hi}}`` with bootstrap 95 % intervals
    over images (``draws``: resampled image indices; none: no intervals)."""

    def summarise(stat) -> dict:
        value = float(stat(np.arange(len(values["clean"]))))
        interval = percentile_interval(np.array([stat(d) for d in draws])) if len(draws) else None
        return {
            "value": value,
            "lo": interval[0] if interval else None,
            "hi": interval[1] if interval else None,
        }

    def of(name):
        def f(index):
            return curve(
                name, values[name][index], values["clean"][index], values["ablated"][index]
            )

        return f

    necessity, sufficiency = of("necessity"), of("sufficiency")
    metric = values["metric"]
    return {
        "removal": summarise(
            lambda i: change(metric, values["removed"][i], values["clean"][i]).mean()
        ),
        "enhancement": summarise(
            lambda i: change(metric, values["enhanced"][i], values["clean"][i]).mean()
        ),
        "necessity": summarise(lambda i: necessity(i)[-1]),
        "necessity_area": summarise(lambda i: area(necessity(i))),
        "sufficiency": summarise(lambda i: sufficiency(i)[-1]),
        "sufficiency_area": summarise(lambda i: area(sufficiency(i))),
    }


LEADER_STATISTICS = {  # statistic -> the better direction
    "necessity": "lower",
    "necessity_area": "lower",
    "sufficiency": "higher",
    "sufficiency_area": "higher",
}


def own_rows(results: Mapping, own: Callable[[str, str, str], bool]) -> list[dict]:
    """The (method, ablation, metric) rows of ``results`` judged by the criterion the method
    selected on (``own(method, ablation, metric)``, e.g.
    :func:`~neuronpath.engine.ablation.own_criterion` of the run's selection)."""
    return [
        {"method": method, "ablation": ablation, "metric": metric}
        for method, by_ablation in results.items()
        for ablation, by_metric in by_ablation.items()
        for metric in by_metric
        if own(method, ablation, metric)
    ]


def leaders(
    results: Mapping, own: Callable[[str, str, str], bool], candidates: Sequence[str]
) -> dict:
    """Per metric, ablation and statistic of :data:`LEADER_STATISTICS`, the best of the
    ``candidates`` (methods, not controls) *among those not judged by their own selection
    criterion*, with the methods left out for that reason: ``{metric: {ablation: {statistic:
    {"method", "value", "excluded"}}}}`` (``method`` None where every candidate is left out)."""
    out: dict = {}
    metrics = dict.fromkeys(m for a in results.values() for b in a.values() for m in b)
    ablations = dict.fromkeys(a for by in results.values() for a in by)
    for metric in metrics:
        for ablation in ablations:
            judged = [m for m in candidates if metric in results.get(m, {}).get(ablation, {})]
            excluded = [m for m in judged if own(m, ablation, metric)]
            fair = [m for m in judged if m not in excluded]
            for statistic, better in LEADER_STATISTICS.items():
                values = {
                    m: results[m][ablation][metric][statistic]["value"]
                    for m in fair
                    if np.isfinite(results[m][ablation][metric][statistic]["value"])
                }
                best = (
                    (min if better == "lower" else max)(values, key=values.get) if values else None
                )
                out.setdefault(metric, {}).setdefault(ablation, {})[statistic] = {
                    "method": best,
                    "value": values.get(best),
                    "better": better,
                    "excluded": excluded,
                }
    return out
