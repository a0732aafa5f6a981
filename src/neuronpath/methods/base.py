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

TOPK_MODES = ("all", "official")


@dataclass(frozen=True)
class PathOptions:
    """Method options beyond the attribution config.

    ``topk_mode``: with K > 1, ``all`` lets every earlier chosen neuron enter the score
    (Alg. 3); ``official`` only the K-th (the released code, spec §8).
    """

    topk_mode: str = "all"

    def __post_init__(self):
        if self.topk_mode not in TOPK_MODES:
            raise ValueError(f"topk mode: expected one of {TOPK_MODES}, got {self.topk_mode!r}")


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
