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
* **Reference statistics** (:class:`ReferenceStats`): each neuron's mean over reference images
  at every position it is read at (mean ablation), and a bounded, order-independent sample of
  activation levels per layer whose quantiles bin neurons (the matched control).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..draws import seeded_generator
from ..errors import InputError, option
from .bootstrap import percentile_interval

METRICS = ("prob", "logit", "logit-diff", "kl")
ABLATIONS = ("zero", "mean", "resample")
SAMPLE_PER_LAYER = 200_000  # activation levels kept per layer for the quantile bins


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


class ReferenceStats:
    """Streaming statistics of every layer's units over reference images: the mean of the
    site's coordinates at each position a unit is read at, (positions, coords) per layer, and
    a bounded sample of activation levels (a unit's mean value over its positions) per layer.
    The sample takes, from each image, the same seeded share of each layer's units whatever the
    order images come in, so the statistics do not depend on batches.  ``counts``: units per
    layer where they differ from the coordinates (attention heads)."""

    def __init__(
        self,
        shapes: Sequence[tuple[int, int]],
        images: int,
        seed: int = 0,
        counts: Sequence[int] | None = None,
    ):
        self.sums = [np.zeros(shape) for shape in shapes]
        self.count = 0
        self.seed = seed
        counts = counts or [n for _, n in shapes]
        self.take = [max(1, min(n, SAMPLE_PER_LAYER // max(images, 1))) for n in counts]
        self.samples: list[list[np.ndarray]] = [[] for _ in shapes]

    def add(
        self, image: str, acts: Sequence[np.ndarray], levels: Sequence[np.ndarray] | None = None
    ) -> None:
        """One image's coordinates per layer, (positions, coords), and its unit values
        (positions, n) where they differ (heads)."""
        for l, values in enumerate(acts):
            self.sums[l] += values
            level = values if levels is None else levels[l]
            chosen = torch.randperm(
                level.shape[-1], generator=seeded_generator("reference", self.seed, image, l)
            )[: self.take[l]].numpy()
            self.samples[l].append(level.mean(0)[chosen])
        self.count += 1

    def means(self) -> list[np.ndarray]:
        return [s / max(self.count, 1) for s in self.sums]

    def edges(self, bins: int) -> list[np.ndarray]:
        """Per layer, the ``bins - 1`` inner quantile edges of the sampled activation levels."""
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        return [np.quantile(np.concatenate(s), quantiles) for s in self.samples]
