"""The one interface every path method implements.

A path method maps (adapter, pixels, clean pass, attribution config, K, options) to a path:
a LongTensor (images, layers, K) of neuron indices, K per layer, plus optional per-image extras
that go into the records.  Each method lives in its own file and is listed once in
:mod:`neuronpath.methods.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass
from ..errors import option

TOPK_MODES = ("all", "official")


@dataclass(frozen=True)
class PathOptions:
    """Method options beyond the attribution config.

    ``topk_mode``: with K > 1, ``all`` lets every earlier chosen neuron enter the score
    (Alg. 3); ``official`` only the K-th (the released code, spec §8).
    ``rerank``: 0 keeps the official whole-layer candidate scoring of the JAS search; C > 0
    re-scores its best C candidates exactly, JAS(P ∪ {w}) (Alg. 1 as written); ``"all"``
    scores every neuron exactly.
    """

    topk_mode: str = "all"
    rerank: int | str = 0

    def __post_init__(self):
        if self.topk_mode not in TOPK_MODES:
            raise ValueError(f"{option('topk_mode')}: expected one of {TOPK_MODES}, got {self.topk_mode!r}")
        object.__setattr__(self, "rerank", parse_rerank(self.rerank))


def parse_rerank(value: int | str) -> int | str:
    """0, a positive number of candidates, or 'all'."""
    if value == "all":
        return value
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = -1
    if count < 0 or (isinstance(value, float) and value != count):
        raise ValueError(f"{option('rerank')}: expected 0, a number of candidates or 'all', got {value!r}")
    return count


@dataclass
class MethodOutput:
    path: torch.Tensor  # (images, layers, K)
    extras: dict[str, list] = field(default_factory=dict)  # per-image values, by record key


@dataclass(frozen=True)
class PathMethod:
    """A named path method: ``method(adapter, pixels, clean, config, k, options)``."""

    name: str
    summary: str  # one line for --help and the docs, citing the paper
    run: Callable[[ModelAdapter, torch.Tensor, CleanPass, AttributionConfig, int, PathOptions],
                  MethodOutput]

    def __call__(self, adapter: ModelAdapter, pixels: torch.Tensor, clean: CleanPass,
                 config: AttributionConfig = AttributionConfig(), k: int = 1,
                 options: PathOptions = PathOptions()) -> MethodOutput:
        return self.run(adapter, pixels, clean, config, k, options)
