"""The ViT-Slim pruning baseline (Chavan et al., CVPR 2022) restricted to FFN neurons, as the
paper's Table 2 compares it: one soft mask per FFN neuron, initialised at 1 and multiplying the
neuron at its read positions, trained on a class's probe images with the model frozen to
minimise

    cross-entropy(label) + lambda * sum over every layer and neuron of |mask|

(ViT-Slim's search objective, its L1 sparsity on the masks).  A mask is a gate: 1 keeps the
neuron, 0 removes it, and a negative value would *flip* it, which no pruning does.  So after every
Adam step the masks are projected back onto mask >= 0 (projected gradient descent; a mask the
L1 term has driven to 0 with no cross-entropy gradient stays there instead of oscillating around
zero by the learning rate), and a layer keeps the neurons with the largest *signed* mask, as
ViT-Slim's released code keeps the dimensions whose mask clears a threshold (ties: lower index;
with the projection every mask is >= 0, so signed and |mask| agree).  Full-batch Adam on the
probe images (chunked to a row budget, gradients accumulated), so the masks depend on nothing
random: the same probe images give the same masks on every run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, option
from ..options import setting
from .adapter import ModelAdapter
from .interventions import multiply_neurons
from .neurons import top_k


@dataclass(frozen=True)
class SlimOptions:
    """The search: Adam ``steps`` at learning rate ``lr``, L1 weight ``l1`` (lambda)."""

    steps: int = setting(100, "vit-slim: Adam steps", type=int, flag="slim_steps")
    lr: float = setting(0.05, "vit-slim: learning rate", type=float, flag="slim_lr")
    l1: float = setting(1e-4, "vit-slim: weight of the L1 term", type=float, flag="slim_lambda")

    def __post_init__(self):
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100_000:
            raise InputError(
                f"{option('slim_steps')}: expected 1 to 100000 steps, got {self.steps!r}"
            )
        if not 0 < self.lr <= 10:
            raise InputError(
                f"{option('slim_lr')}: expected a learning rate in (0, 10], got {self.lr}"
            )
        if not 0 <= self.l1 <= 1e3:
            raise InputError(
                f"{option('slim_lambda')}: expected an L1 weight in [0, 1000], got {self.l1}"
            )


def train_masks(
    adapter: ModelAdapter,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    options: SlimOptions = SlimOptions(),
    chunk: int = 64,
) -> list[torch.Tensor]:
    """Soft masks (n_l,) per layer after the search on ``pixels`` of class ``labels``."""
    device = adapter.device
    pixels = pixels.to(device, adapter.dtype)
    labels = torch.as_tensor(labels, device=device).long()
    masks = [
        torch.ones(n, dtype=torch.float64, device=device, requires_grad=True)
        for n in adapter.widths()
    ]
    optimiser = torch.optim.Adam(masks, lr=options.lr)
    for _ in range(options.steps):
        optimiser.zero_grad()
        for start in range(0, len(pixels), chunk):
            rows = slice(start, start + chunk)
            count = len(pixels[rows])
            factors = {l: m[None, :].expand(count, -1) for l, m in enumerate(masks)}
            with torch.enable_grad(), multiply_neurons(adapter, factors):
                logits = adapter.logits(pixels[rows])
                loss = torch.nn.functional.cross_entropy(
                    logits.double(), labels[rows], reduction="sum"
                ) / len(pixels)
            loss.backward()
        with torch.enable_grad():
            (options.l1 * sum(m.abs().sum() for m in masks)).backward()
        optimiser.step()
        with torch.no_grad():
            for m in masks:
                m.clamp_(min=0.0)  # a gate, never a flip (the module docstring)
    return [m.detach() for m in masks]


def ranked_by_mask(masks: list[torch.Tensor], t: int) -> list[list[int]]:
    """Per layer, the t neurons with the largest signed mask, largest first (ties: lower
    index)."""
    return [top_k(m, t).tolist() for m in masks]


def kept_by_mask(masks: list[torch.Tensor], t: int) -> list[list[int]]:
    """Per layer, the t neurons with the largest signed mask, sorted by index."""
    return [sorted(layer) for layer in ranked_by_mask(masks, t)]
