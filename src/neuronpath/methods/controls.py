"""Controls: paths and kept neurons drawn at random, the baselines every method is compared
with (``evaluate``'s random path, ``prune``'s random keep).  Each draw is seeded by what it is
for (the seed and the image or class), never by the batch, device or order of processing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..draws import per_layer, seeded_generator
from .base import Control


def random_path(
    image_id: str, seed: int, num_layers: int, width: int | Sequence[int], k: int = 1
) -> torch.Tensor:
    """A reproducible random path for one image: k distinct uniformly drawn neurons per layer
    (``width``: one FFN width or one per layer), the same for a given (seed, image id)."""
    generator = seeded_generator(seed, image_id)
    return torch.stack(
        [torch.randperm(n, generator=generator)[:k] for n in per_layer(width, num_layers)]
    )


def random_keep(
    class_name: str, seed: int, num_layers: int, width: int | Sequence[int], t: int
) -> list[list[int]]:
    """t uniformly drawn neurons per layer for a class (seeded; ``width`` one FFN width or one
    per layer)."""
    generator = seeded_generator("keep", seed, class_name)
    return [
        sorted(torch.randperm(n, generator=generator)[:t].tolist())
        for n in per_layer(width, num_layers)
    ]


RANDOM = Control(
    "random",
    "uniformly random neurons per layer, seeded per image (evaluate) or per class (prune)",
    random_path,
    random_keep,
)
