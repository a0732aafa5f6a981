"""Seeded random draws that depend only on what they are for (a seed and names), never on the
batch, the device or the order of processing: the controls' random paths and kept neurons, the
pruning split and masks.  A base module: every layer may use it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from .errors import InputError


def seeded_generator(*parts) -> torch.Generator:
    """A CPU generator seeded from the SHA-256 of ``parts`` joined by ':'."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def per_layer(width: int | Sequence[int], num_layers: int) -> list[int]:
    """One FFN width per layer, from one width for all layers or a per-layer list."""
    widths = [width] * num_layers if isinstance(width, int) else [int(w) for w in width]
    if len(widths) != num_layers:
        raise InputError(f"widths: expected {num_layers} per-layer widths, got {len(widths)}")
    return widths
