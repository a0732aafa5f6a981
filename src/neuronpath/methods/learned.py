"""Learned path: a soft choice of one unit per layer, trained on the image, then rounded.

Each layer l holds logits theta_l over its units and a soft choice s_l = softmax(theta_l).  Two
edited forwards read every layer at once, with b_l what an ablated unit takes (zero, or its
mean over ``find --reference``'s images) and h_l the unit values as the forward computes them
(upstream edits included):

    kept:    h_l <- b_l + s_l (h_l - b_l)      (one-hot s: only the chosen unit keeps its value)
    removed: h_l <- h_l - s_l (h_l - b_l)      (one-hot s: only the chosen unit is ablated)

and Adam (learning rate ``learned_lr``) minimises, from theta = 0 (every unit equally likely),
``-(F(kept) - F(removed))`` (``both``), ``F(removed)`` (``necessity``) or ``-F(kept)``
(``sufficiency``) for ``learned_steps`` steps, F the run's objective on its target (softmax
probability by default).  The path is each layer's top K of theta; the scores it saves
(``find --save-scores``) are theta.  Every image has its own theta and rows do not interact,
so a batch is the images trained side by side.  Cost per image: ``learned_steps`` x (1 or 2)
forward and backward passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..engine.ablation import SELECTABLE, SIDES, STATISTICS, path_edit, selection_criterion
from ..engine.attribution import autocast_context, objective, rows_per_chunk
from ..engine.interventions import ablate_neurons
from ..engine.neurons import stack_layers, top_k
from ..errors import InputError, option
from .base import (
    MethodOptions,
    MethodOutput,
    PathMethod,
    ablated_values,
    ablation_field,
    check_fields,
)


@dataclass(frozen=True)
class LearnedOptions(MethodOptions):
    """Options of the learned path (see the module docstring)."""

    learned_steps: int = field(
        default=60, metadata={"type": int, "help": "Adam steps on each image's soft choice"}
    )
    learned_lr: float = field(
        default=0.1, metadata={"type": float, "help": "Adam's learning rate on the logits"}
    )
    learned_ablation: str = ablation_field()
    learned_score: str = field(
        default="both",
        metadata={
            "choices": STATISTICS,
            "help": "both: maximise F(kept) - F(removed); necessity: minimise F(removed); "
            "sufficiency: maximise F(kept)",
        },
    )

    def __post_init__(self):
        choices = {"learned_ablation": SELECTABLE, "learned_score": STATISTICS}
        check_fields(self, choices, counts=["learned_steps"], positive=["learned_lr"])

    @property
    def needs_reference(self) -> bool:
        return self.learned_ablation == "mean"

    def selection(self, objective: str, reference: str | None) -> dict:
        return selection_criterion(self.learned_ablation, self.learned_score, objective, reference)


def soft_outputs(adapter, pixels, targets, config, sources, theta, sides):
    """F of each image (``pixels``, ``targets``) under the soft edits of ``theta`` (per layer,
    (images, n) logits) for each of ``sides`` (the module docstring), differentiable in theta:
    {side: (images,)}."""
    n_images = targets.shape[0]
    device = adapter.device
    soft = [t.softmax(-1) for t in theta]
    image = torch.arange(n_images, device=device).repeat(len(sides))
    which = torch.zeros(len(image), dtype=torch.long, device=device)
    keep = torch.tensor([side == "kept" for side in sides], device=device)
    keep = keep.repeat_interleave(n_images)
    edits = {
        l: (*path_edit(s.repeat(len(sides), 1), keep), sources[l], which)
        for l, s in enumerate(soft)
    }
    with (
        torch.enable_grad(),
        ablate_neurons(adapter, edits),
        autocast_context(adapter, config.autocast),
    ):
        logits = adapter.logits(pixels[image])
    values = objective(logits, targets[image], config.objective).reshape(len(sides), -1)
    return dict(zip(sides, values))


def learned_path(adapter, pixels, clean, config, k: int = 1, options=LearnedOptions()):
    """The learned path (module docstring): (images, layers, k) and the final logits theta
    (images, layers, widest layer)."""
    if adapter.unit_set not in ("neurons", "sae"):
        raise InputError(
            f"{option('units')}: the learned path is defined for paths of neurons or SAE latents, "
            f"got {adapter.unit_set}"
        )
    pixels = pixels.to(adapter.device, adapter.dtype)
    n_images = clean.labels.shape[0]
    sources = ablated_values(adapter, clean, options.learned_ablation, "learned_ablation")
    sides = SIDES[options.learned_score]
    # images trained together: as many as the memory budget's rows allow
    group = max(1, rows_per_chunk(adapter, pixels, config.memory_budget) // len(sides))
    found = []
    for start in range(0, n_images, group):
        images = slice(start, min(start + group, n_images))
        theta = [
            torch.zeros(
                images.stop - start,
                w,
                dtype=adapter.dtype,
                device=adapter.device,
                requires_grad=True,
            )
            for w in clean.widths
        ]
        optimiser = torch.optim.Adam(theta, lr=options.learned_lr)
        for _ in range(options.learned_steps):
            out = soft_outputs(
                adapter, pixels[images], clean.targets[images], config, sources, theta, sides
            )
            loss = (out.get("removed", 0) - out.get("kept", 0)).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        found.append(stack_layers([t.detach() for t in theta]))
    scores = torch.cat(found)
    return top_k(scores, k), scores


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    path, scores = learned_path(adapter, pixels, clean, config, k, options)
    return MethodOutput(path, scores=scores)


METHOD = PathMethod(
    "learned",
    "learned path: per layer a softmax choice of one unit, trained on the image so that "
    "keeping it alone keeps F and ablating it removes F, then rounded",
    _method,
    options=LearnedOptions,
    title="learned path",
    units=("neurons", "sae"),
    undefined="its soft choice ablates neurons",
)
