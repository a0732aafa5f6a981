"""Controls: paths and kept neurons drawn at random, the baselines every method is compared
with (``evaluate``'s random path, ``prune``'s random keep).  Each draw is seeded by what it is
for (the seed and the image or class), never by the batch, device or order of processing."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..draws import per_layer, seeded_generator
from ..pathformat import ABSENT
from .base import Control


def random_path(
    image_id: str,
    seed: int,
    num_layers: int,
    width: int | Sequence[int],
    k: int = 1,
    blocks: Sequence[int] | None = None,
) -> torch.Tensor:
    """A reproducible random path for one image: k distinct uniformly drawn neurons per layer
    (``width``: one FFN width or one per layer), the same for a given (seed, image id).  With
    ``blocks`` (the block of every site of a mixed path), one unit per block, drawn uniformly
    among all the units of its sites, the block's other sites ``ABSENT``."""
    generator = seeded_generator(seed, image_id)
    widths = per_layer(width, num_layers)
    if blocks is None:
        return torch.stack([torch.randperm(n, generator=generator)[:k] for n in widths])
    path = torch.full((num_layers, 1), ABSENT, dtype=torch.long)
    for block in sorted(set(blocks)):
        sites = [l for l in range(num_layers) if blocks[l] == block]
        pick = int(torch.randint(sum(widths[l] for l in sites), (1,), generator=generator))
        for site in sites:
            if pick < widths[site]:
                path[site, 0] = pick
                break
            pick -= widths[site]
    return path


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


def matched_path(
    levels: Sequence[torch.Tensor],
    path: torch.Tensor,
    generator: torch.Generator,
    window: int = 8,
    edges: Sequence[torch.Tensor] | None = None,
) -> tuple[torch.Tensor, int]:
    """A random path matched to ``path`` (layers, K) on one image: for each path neuron, another
    neuron of its layer at the same activation level on the image (``levels[l]``, (n_l,)), never
    a path neuron and never twice.

    By default (``edges`` None) the partner is drawn uniformly among the ``window`` free neurons
    whose level on this image is nearest the path neuron's (ties: lower index): as close as the
    layer allows, everywhere -- path neurons sit mostly in the top decile of their layer, where
    decile bins pooled over the layer leave partners at half their level.  With ``edges`` (inner
    bin edges from a reference set) it is drawn uniformly among the free neurons in the path
    neuron's quantile bin; where the bin holds none, the nearest level is taken instead, and
    counted.  Returns (the matched path, the number of neurons that found no partner in their
    bin; 0 without bins)."""
    chosen, unmatched = torch.empty_like(path), 0
    for l in range(path.shape[0]):
        level = levels[l].double()
        free = torch.ones(level.shape[0], dtype=torch.bool)
        free[path[l]] = False
        bins = None if edges is None else torch.bucketize(level, edges[l].double())
        for j, neuron in enumerate(path[l].tolist()):
            distance = (level - level[neuron]).abs().masked_fill(~free, torch.inf)
            if bins is None:
                near = torch.sort(distance, stable=True).indices[: min(window, int(free.sum()))]
                pick = near[torch.randint(len(near), (1,), generator=generator)].item()
            else:
                same = torch.nonzero(free & (bins == bins[neuron])).flatten()
                if len(same):
                    pick = same[torch.randint(len(same), (1,), generator=generator)].item()
                else:
                    pick, unmatched = int(distance.argmin()), unmatched + 1
            chosen[l, j] = pick
            free[pick] = False
    return chosen, unmatched


RANDOM = Control(
    "random",
    "uniformly random neurons per layer, seeded per image (evaluate) or per class (prune)",
    random_path,
    random_keep,
)
MATCHED = Control(
    "matched-random",
    "per path neuron, a random neuron of its layer at the same activation level on the image "
    "(among the nearest levels, or in the same quantile bin of a reference set), seeded, drawn "
    "for every method; evaluate's faithfulness study only",
    matched=matched_path,
)
