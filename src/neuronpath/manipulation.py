"""Removal and enhancement of path neurons (§4.2, App. C.4-C.5; spec §6).

For each image and path, the path neurons of *every* layer are set to 0 (removal) or
multiplied by 2 (enhancement) at the adapter's token(s) in one forward, everything downstream
recomputed; the unmodified pass is shared by all paths of an image.  All edited and
unmodified rows of a batch run in one ``inference_mode`` forward (chunked).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

from .adapters import ModelAdapter
from .interventions import scale_neurons

OPS = {"remove": 0.0, "enhance": 2.0}


def seeded_generator(*parts) -> torch.Generator:
    """A CPU generator seeded from the SHA-256 of ``parts`` joined by ':' (so draws depend only
    on what they are for, not on batch, device or order)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def random_path(image_id: str, seed: int, num_layers: int, width: int, k: int = 1) -> torch.Tensor:
    """A reproducible random path for one image (k distinct neurons per layer): the same for
    a given (seed, image id) whatever the batch, device or order of processing."""
    generator = seeded_generator(seed, image_id)
    return torch.stack([torch.randperm(width, generator=generator)[:k] for _ in range(num_layers)])


def manipulate(adapter: ModelAdapter, pixels: torch.Tensor, labels: torch.Tensor,
               paths: Mapping[str, torch.Tensor], ops: Sequence[str] = tuple(OPS),
               max_rows: int = 256) -> dict[str, torch.Tensor]:
    """Ground-truth probability and predicted label after each edit.

    ``paths[method]``: (images, layers) or (images, layers, K) neuron indices.  Returns
    ``{"base_prob", "base_pred", f"{method}:{op}_prob", f"{method}:{op}_pred", ...}``, each a
    tensor of shape (images,).
    """
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"ops: unknown {unknown}; expected some of {list(OPS)}")
    device = adapter.device
    pixels = pixels.to(device, adapter.dtype)
    labels = torch.as_tensor(labels, device=device).long()
    n = labels.shape[0]
    # Row blocks: the unmodified pass, then one block per (method, op).
    blocks = [("base", None, 1.0)] + [(m, op, OPS[op]) for m in paths for op in ops]
    index = {l: [] for l in range(adapter.num_layers)}
    factors = []
    for method, _, factor in blocks:
        # the unmodified block scales any path by 1, so it can borrow the first one
        path = paths[next(iter(paths))] if method == "base" else paths[method]
        path = path.to(device).reshape(n, adapter.num_layers, -1)
        for l in range(adapter.num_layers):
            index[l].append(path[:, l])
        factors.append(torch.full((n,), factor, dtype=adapter.dtype, device=device))
    widths = {v.shape[1] for parts in index.values() for v in parts}
    if len(widths) != 1:
        raise ValueError("paths: every method must have the same number of neurons per layer")
    index = {l: torch.cat(parts) for l, parts in index.items()}
    factors = torch.cat(factors)
    images = torch.arange(n, device=device).repeat(len(blocks))
    probs, preds = [], []
    with torch.inference_mode():
        for start in range(0, images.shape[0], max_rows):
            rows = slice(start, start + max_rows)
            with scale_neurons(adapter, {l: i[rows] for l, i in index.items()}, factors[rows]):
                logits = adapter.logits(pixels[images[rows]])
            if logits.dtype in (torch.float16, torch.bfloat16):
                logits = logits.float()
            probs.append(logits.softmax(-1).gather(1, labels[images[rows]][:, None])[:, 0])
            preds.append(logits.argmax(-1))
    probs, preds = torch.cat(probs).reshape(len(blocks), n), torch.cat(preds).reshape(len(blocks), n)
    out = {}
    for b, (method, op, _) in enumerate(blocks):
        key = "base" if method == "base" else f"{method}:{op}"
        out[f"{key}_prob"], out[f"{key}_pred"] = probs[b], preds[b]
    return out
