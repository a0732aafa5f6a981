"""Seeded random draws that depend only on what they are for (a seed and names), never on the
batch, the device or the order of processing: random-path controls and pruning draws."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def seeded_generator(*parts) -> torch.Generator:
    """A CPU generator seeded from the SHA-256 of ``parts`` joined by ':'."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def per_layer(width: int | Sequence[int], num_layers: int) -> list[int]:
    """One FFN width per layer, from one width for all layers or a per-layer list."""
    widths = [width] * num_layers if isinstance(width, int) else [int(w) for w in width]
    if len(widths) != num_layers:
        raise ValueError(f"widths: expected {num_layers} per-layer widths, got {len(widths)}")
    return widths


def random_path(image_id: str, seed: int, num_layers: int, width: int | Sequence[int],
                k: int = 1) -> torch.Tensor:
    """A reproducible random path for one image (k distinct neurons per layer, ``width`` one
    FFN width or one per layer): the same for a given (seed, image id) whatever the batch,
    device or order of processing."""
    generator = seeded_generator(seed, image_id)
    return torch.stack([torch.randperm(n, generator=generator)[:k]
                        for n in per_layer(width, num_layers)])
