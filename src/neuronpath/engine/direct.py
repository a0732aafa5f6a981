"""Direct effects of units on a contrastive image tower's embedding (CLIP, SigLIP), read
through the text tower: what a unit *writes* means in words.

A unit writes into the residual stream at each token: a neuron i its value times its column of
the FFN output projection, h_i w_i; a head its slice through the attention output projection,
W_o[:, h] z_h.  Its **direct effect** on the image embedding e is that write carried to e along
the shortest route -- through the final norm and the pooling (CLIP: the CLS token's norm and
projection; SigLIP: the norm and the attention-pooling head), *skipping every later block* --
with every nonlinearity of that route **frozen at the image** (Gandelsman et al., ICLR 2024;
direct logit attribution): each LayerNorm's scale 1/sigma, the pooling head's attention weights
and its MLP's activation (as a gate act(u)/u).  The route is then an affine map e(R) = A R + b of
the residual stream R after the last block, equal to the model's own embedding at the image,
and a unit's score for a text t (an L2-normalised text embedding) is

    score(unit, t) = sum over tokens of < A write_token , t >,

its share of <e, t>, the quantity the zero-shot logit ranks classes by.  The shares of all the
stream's components (the embeddings, every attention and FFN output, biases included) sum to
<e, t> - <b, t> exactly.  Differentiating through the live norm instead would not: LayerNorm
is blind to a rescaling of its input, so its derivative at R applied to R is zero, and every
score would lose a multiple of the image's own text-similarity profile.  This is the *direct*
effect only: what the unit contributes through later blocks (its indirect effect) is not in it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .adapter import ModelAdapter

LABEL_CHUNK = 32  # texts whose gradients are held at once


@dataclass(frozen=True)
class EmbeddingHead:
    """How an image tower's embedding is read off its residual stream: ``residual``, the
    module whose output is the stream after the last block; ``embed(stream, frozen_at)``, the
    stream (rows, tokens, d) -> the image embeddings (rows, d_e), its nonlinearities frozen at
    the stream ``frozen_at`` (affine in ``stream``; the true embedding at ``frozen_at``);
    ``texts`` (C, d_e), the L2-normalised embeddings of the class texts, named ``names``."""

    residual: nn.Module
    embed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    texts: torch.Tensor
    names: list[str]


def direct_effects(
    adapter: ModelAdapter,
    head: EmbeddingHead,
    pixels: torch.Tensor,
    units: Mapping[int, torch.Tensor],
    texts: torch.Tensor | None = None,
) -> dict[int, torch.Tensor]:
    """``{site: (rows, n_sel, C)}``: each image's direct-effect score (the module docstring)
    of the units ``units[site]`` (indices) for each text (default: the head's texts).  The
    sites' outputs projections are the modules the adapter reads at (their input is the
    site's coordinates)."""
    texts = head.texts if texts is None else texts
    pixels = pixels.to(adapter.device, adapter.dtype)
    found: dict[str, torch.Tensor] = {}
    coords: dict[int, torch.Tensor] = {}

    def keep_residual(module, args, output):
        found["residual"] = (
            output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
        ).detach()

    def keep(site):
        def hook(value):
            coords[site] = value.detach()

        return hook

    handle = head.residual.register_forward_hook(keep_residual)
    try:
        with torch.no_grad(), adapter.hooks({s: keep(s) for s in units}):
            adapter.logits(pixels)
    finally:
        handle.remove()
    residual = found["residual"].requires_grad_(True)
    with torch.enable_grad():  # affine in the stream: its gradient is the map A itself
        embedding = head.embed(residual, found["residual"])
    texts = texts.to(embedding.device, embedding.dtype)
    out = {s: [] for s in units}
    for start in range(0, texts.shape[0], LABEL_CHUNK):
        chunk = texts[start : start + LABEL_CHUNK]
        grads = torch.stack(
            [
                torch.autograd.grad((embedding @ t).sum(), residual, retain_graph=True)[0]
                for t in chunk
            ],
            dim=1,
        )  # (rows, texts, tokens, d)
        for site, index in units.items():
            weight = adapter.site(site).weight  # (d, coords): the site is its input
            z = coords[site]  # (rows, tokens, coords)
            if z.shape[1] != grads.shape[2]:
                raise ValueError(
                    f"direct effects: site {site} has {z.shape[1]} tokens, the residual "
                    f"stream {grads.shape[2]}"
                )
            m, index = adapter.units(site), index.to(z.device)
            cols = (
                index if m.identity else (index[:, None] * m.size + torch.arange(m.size)).flatten()
            )
            through = grads @ weight[:, cols].to(grads.dtype)  # (rows, texts, tokens, cols)
            per = (through * z[..., cols][:, None]).sum(2)  # (rows, texts, cols)
            per = per if m.identity else per.unflatten(-1, (len(index), m.size)).sum(-1)
            out[site].append(per.transpose(1, 2))  # (rows, units, texts)
    return {s: torch.cat(parts, dim=2).detach() for s, parts in out.items()}
