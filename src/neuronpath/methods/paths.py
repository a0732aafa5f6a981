"""``find_paths``: any set of registered path methods on a batch of images, with the final JAS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass, clean_pass, joint_attribution_scores
from ..errors import InputError, option
from .base import MethodOptions
from .registry import DEFAULT_METHODS, REGISTRY, method_options


def check_units(methods, units: str) -> None:
    """Refuse a method that is not defined for paths of ``units`` (before any work)."""
    for name in methods:
        method = REGISTRY[name]
        if units not in method.units:
            raise InputError(
                f"{option('methods')}: {name} is not defined for {units} paths: "
                f"{method.undefined} (defined for {', '.join(method.units)})"
            )


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
    ranked: dict[str, torch.Tensor] = field(default_factory=dict)  # method -> its scores


def find_paths(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels,
    methods: Sequence[str] | Mapping[str, MethodOptions | None] = DEFAULT_METHODS,
    config: AttributionConfig = AttributionConfig(),
    k: int = 1,
    reference: list[torch.Tensor] | None = None,
) -> PathResult:
    """Find each method's path for a batch of images and its final JAS
    (``docs/official-code.md#final-jas``).

    ``methods``: names from :data:`~neuronpath.methods.registry.REGISTRY` (``jas``,
    ``activation``, ``influence-pattern``, ``knowledge``), each with its default options, or a
    mapping from names to options (``{"jas": JASOptions(...), "activation": None}``; None:
    the defaults).
    One clean forward is shared by every method; the final JAS of all paths comes from one
    batched pass.  ``reference``: per layer, (tokens, coords) each unit's mean over a reference
    set (``CleanPass.reference``), for the methods whose options start from it.
    """
    options = method_options(methods)
    check_units(options, adapter.unit_set)
    for name, opts in options.items():
        opts.check(k)
    clean = clean_pass(adapter, pixels, labels, config)
    clean.reference = reference
    paths, extras, ranked = {}, {}, {}
    for method, opts in options.items():
        output = REGISTRY[method](adapter, pixels, clean, config, k, opts)
        paths[method] = output.path
        if output.extras:
            extras[method] = output.extras
        if output.scores is not None:
            ranked[method] = output.scores
    last_only = any(opts.final_terms_last_only for opts in options.values())
    finals = joint_attribution_scores(
        adapter,
        pixels,
        clean,
        [path_to_set(paths[m]) for m in options],
        config,
        last_only=last_only,
    )
    if k == 1:
        paths = {m: p[..., 0] for m, p in paths.items()}
    return PathResult(clean, paths, dict(zip(options, finals)), extras, ranked)
