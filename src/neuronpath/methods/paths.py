"""``find_paths``: any set of registered path methods on a batch of images, with the final JAS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass, clean_pass, joint_attribution_scores
from .base import PathOptions
from .registry import DEFAULT_METHODS, REGISTRY, check_methods


def path_to_set(path: torch.Tensor) -> dict[int, torch.Tensor]:
    """(images, layers, k) path -> neuron set {layer: (images, k) indices}."""
    return {l: path[:, l] for l in range(path.shape[1])}


@dataclass
class PathResult:
    """Paths and their final JAS for a batch of images, plus the clean pass."""

    clean: CleanPass
    paths: dict[str, torch.Tensor]  # method -> (images, layers) for K = 1, else (images, layers, K)
    scores: dict[str, torch.Tensor]  # method -> (images,) final JAS
    extras: dict[str, dict] = field(default_factory=dict)  # method -> extra per-image outputs


def find_paths(adapter: ModelAdapter, pixels: torch.Tensor, labels,
               methods: Sequence[str] = DEFAULT_METHODS,
               config: AttributionConfig = AttributionConfig(), k: int = 1,
               topk_mode: str = "all", rerank: int | str = 0) -> PathResult:
    """Find each method's path for a batch of images and its final JAS (spec §2, "Final JAS").

    ``methods`` are names from :data:`~neuronpath.methods.registry.REGISTRY` (``jas``,
    ``activation``, ``influence-pattern``, ``knowledge``).  One clean forward is shared by every
    method; the final JAS of all paths comes from one batched pass.  ``rerank`` re-scores the
    JAS search's candidates exactly (see :func:`~neuronpath.methods.jas.jas_path`).
    """
    methods = check_methods(methods)
    options = PathOptions(topk_mode, rerank)
    clean = clean_pass(adapter, pixels, labels, config)
    paths, extras = {}, {}
    for method in methods:
        output = REGISTRY[method](adapter, pixels, clean, config, k, options)
        paths[method] = output.path
        if output.extras:
            extras[method] = output.extras
    finals = joint_attribution_scores(adapter, pixels, clean,
                                      [path_to_set(paths[m]) for m in methods], config,
                                      last_only=topk_mode == "official")
    if k == 1:
        paths = {m: p[..., 0] for m, p in paths.items()}
    return PathResult(clean, paths, dict(zip(methods, finals)), extras)
