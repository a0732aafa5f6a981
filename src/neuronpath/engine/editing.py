"""Edited forwards: the model run with neurons scaled, zeroed or masked, in ``inference_mode``.

One chunked loop, :func:`edited_chunks`, runs every row under its edit and yields the logits;
:func:`edited_predictions` keeps the rows' ground-truth probability and predicted class.  On
them stand

* :func:`manipulate` -- removal (x0) and enhancement (x2) of path neurons (§4.2,
  App. C.4-C.5; docs/official-code.md#removal-and-enhancement): the path neurons of *every* layer
  are edited at the adapter's token(s) in one forward, everything downstream recomputed; the
  unmodified pass is shared by all paths of an image;
* :func:`pruned_predictions` -- each row under its own per-layer 0/1 neuron multipliers
  (class-specific pruning, §4.4).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from ..errors import InputError, option
from .adapter import ModelAdapter
from .interventions import multiply_neurons, scale_neurons
from .neurons import layer_width

OPS = {"remove": 0.0, "enhance": 2.0}


def edited_chunks(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    images: torch.Tensor,
    edit: Callable[[slice], object],
    max_rows: int = 256,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """The logits of each chunk of rows, ``max_rows`` rows per forward: row r is image
    ``images[r]`` run inside the context ``edit(rows)`` of the chunk it belongs to."""
    for start in range(0, len(images), max_rows):
        rows = slice(start, min(start + max_rows, len(images)))
        with torch.inference_mode(), edit(rows):
            logits = adapter.logits(pixels[images[rows]])
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        yield rows, logits


def edited_predictions(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    images: torch.Tensor,
    edit: Callable[[slice], object],
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth probability and predicted class of each row (see :func:`edited_chunks`)."""
    probs, preds = [], []
    for rows, logits in edited_chunks(adapter, pixels, images, edit, max_rows):
        probs.append(logits.softmax(-1).gather(1, labels[images[rows]][:, None])[:, 0])
        preds.append(logits.argmax(-1))
    return torch.cat(probs), torch.cat(preds)


def manipulate(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    paths: Mapping[str, torch.Tensor],
    ops: Sequence[str] = tuple(OPS),
    max_rows: int = 256,
) -> dict[str, torch.Tensor]:
    """Ground-truth probability and predicted label after each edit.

    ``paths[method]``: (images, layers) or (images, layers, K) neuron indices.  Returns
    ``{"base_prob", "base_pred", f"{method}:{op}_prob", f"{method}:{op}_pred", ...}``, each a
    tensor of shape (images,).
    """
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise InputError(f"{option('ops')}: unknown {unknown}; expected some of {list(OPS)}")
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
        raise InputError("paths: every method must have the same number of neurons per layer")
    index = {l: torch.cat(parts) for l, parts in index.items()}
    factors = torch.cat(factors)
    images = torch.arange(n, device=device).repeat(len(blocks))
    probs, preds = edited_predictions(
        adapter,
        pixels,
        labels,
        images,
        lambda rows: scale_neurons(adapter, {l: i[rows] for l, i in index.items()}, factors[rows]),
        max_rows,
    )
    probs, preds = probs.reshape(len(blocks), n), preds.reshape(len(blocks), n)
    out = {}
    for b, (method, op, _) in enumerate(blocks):
        key = "base" if method == "base" else f"{method}:{op}"
        out[f"{key}_prob"], out[f"{key}_pred"] = probs[b], preds[b]
    return out


def pruned_predictions(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    multipliers: Sequence[Mapping[int, torch.Tensor]],
    width: int | Sequence[int],
    image_index: Sequence[int] | None = None,
    max_rows: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth probability and predicted label of each row: image ``image_index[r]``
    (default: row r is image r) under its own ``multipliers[r]`` (``{layer: (n_l,) factors}``;
    an empty dict is the unpruned model; ``width``: one FFN width or one per layer)."""
    device = adapter.device
    pixels = pixels.to(device, adapter.dtype)
    labels = torch.as_tensor(labels, device=device).long()
    images = torch.as_tensor(
        list(range(len(multipliers))) if image_index is None else list(image_index), device=device
    )
    layers = sorted({l for m in multipliers for l in m})
    ones = {l: torch.ones(layer_width(width, l), dtype=torch.float64) for l in layers}

    def edit(rows: slice):
        chunk = multipliers[rows]
        return multiply_neurons(
            adapter, {l: torch.stack([m.get(l, ones[l]) for m in chunk]) for l in layers}
        )

    return edited_predictions(adapter, pixels, labels, images, edit, max_rows)
