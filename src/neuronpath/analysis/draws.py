"""Seeded random draws that depend only on what they are for (a seed and names), never on the
batch, the device or the order of processing: random-path controls and pruning draws."""

from __future__ import annotations

import hashlib

import torch


def seeded_generator(*parts) -> torch.Generator:
    """A CPU generator seeded from the SHA-256 of ``parts`` joined by ':'."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def random_path(image_id: str, seed: int, num_layers: int, width: int, k: int = 1) -> torch.Tensor:
    """A reproducible random path for one image (k distinct neurons per layer): the same for
    a given (seed, image id) whatever the batch, device or order of processing."""
    generator = seeded_generator(seed, image_id)
    return torch.stack([torch.randperm(width, generator=generator)[:k] for _ in range(num_layers)])
