"""Influence Pattern as Lu et al. (2021) define it: the paper's Eq. 9 and Alg. 2, as written.

The pattern influence of a path P = (w^1 .. w^L) is the integral over the input path
x_alpha = alpha x (the zero baseline in normalised space, as the official surrogate) of the
product of the chain of derivatives along it,

    I(x, P) = int_0^1  dw^1/dalpha * prod_{l=2..L} dw^l/dw^{l-1} * dF/dw^L  dalpha,

and Alg. 2 builds P greedily: at layer l it keeps the neuron w maximising I(x, P_{<l} + {w}),
the partial pattern continued to the output by the total derivative dF/dw.  The choices where
the definition leaves room, and why:

* **The first factor** is dw^1/dalpha = (x - x') . grad_x w^1 at x_alpha, the input's
  influence on w^1 along the path (so a one-neuron pattern's influence is the integrated
  gradient of F through that neuron, and the integral of this factor alone is w^1(x) - w^1(x')).
* **dw^l/dw^{l-1}** is the total derivative of layer l's neuron with respect to layer l-1's
  chosen neuron through everything between them (residual stream, attention, layer norms), in
  the unedited network at x_alpha.
* **A neuron read at several positions** (mean-pooled heads, ``patches``/``all`` policies) is
  one node of the graph per position, so a pattern through the neurons w^1 .. w^L sums the
  product over every choice of positions p_1 .. p_L -- Lu et al.'s sum over the paths of the
  graph.  That sum is a chain of matrix-vector products: the chain c_l (a vector over layer l's
  read positions) is c_1 = dw^1/dalpha per position and c_l = J_l c_{l-1}, J_l the Jacobian
  from w^{l-1}'s positions to w^l's, and I = sum_p c_L[p] dF/dw^L_p.  Forward mode gives J_l c
  for every candidate of layer l at once, seeded with c itself
  (:mod:`neuronpath.engine.derivatives`).  Summing each factor over the positions *before*
  multiplying, as an earlier version did, is not that sum (a one-layer model is off by the
  number of positions); at one position (CLS) the two agree.
* **The integral** uses the run's alpha grid (default: the official left sum, m = 20).

Cost per batch: one forward and backward (dF/dh of every layer at every alpha) and L
forward-mode passes (each layer's candidates at once, one Jacobian-vector product per alpha).
One neuron per layer (Alg. 2 has no TopK variant); the record also holds ``influence``, I(x, P)
of the chosen path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..engine.attribution import AttributionConfig, CleanPass, rows_per_chunk
from ..engine.derivatives import directional_derivatives, total_gradients
from ..engine.neurons import stack_layers
from ..errors import InputError, option
from .base import MethodOptions, MethodOutput, PathMethod


@dataclass(frozen=True)
class LuOptions(MethodOptions):
    """No options; Alg. 2 defines one neuron per layer."""

    def check(self, k: int) -> None:
        if k != 1:
            raise InputError(
                f"{option('topk')}: influence-pattern-lu is defined for one neuron "
                f"per layer (Alg. 2), got K = {k}"
            )


def lu_path(
    adapter,
    pixels: torch.Tensor,
    clean: CleanPass,
    config: AttributionConfig = AttributionConfig(),
    with_scores: bool = False,
):
    """Alg. 2 with Eq. 9 for a batch: the path (images, layers, 1) and each image's I(x, P);
    ``with_scores``: also every candidate's score at its layer given the path before it
    (images, layers, widest layer), the greedy step's ranking."""
    grid = config.grid
    steps = grid.steps
    alphas = torch.tensor(grid.points, dtype=adapter.dtype, device=adapter.device)
    weights = torch.tensor(grid.weights, dtype=adapter.dtype, device=adapter.device)
    pixels = pixels.to(adapter.device, adapter.dtype)
    per_chunk = max(1, rows_per_chunk(adapter, pixels, config.memory_budget) // steps)
    paths, influence, ranked = [], [], []
    for start in range(0, pixels.shape[0], per_chunk):
        images = slice(start, min(start + per_chunk, pixels.shape[0]))
        x = pixels[images].repeat_interleave(steps, 0)  # rows: image-major, then alpha
        rows = x * alphas.repeat(pixels[images].shape[0])[:, None, None, None]
        targets = clean.targets[images].repeat_interleave(steps)
        path, score, layer_scores = _greedy(
            adapter, rows, x, targets, weights, config.objective, steps
        )
        paths.append(path)
        influence.append(score)
        ranked.append(stack_layers(layer_scores))
    out = torch.cat(paths)[..., None], torch.cat(influence)
    return (*out, torch.cat(ranked)) if with_scores else out


def _greedy(adapter, rows, tangent, targets, weights, kind, steps):
    """The greedy pattern of the images of ``rows`` (images x steps rows, image-major)."""
    count = rows.shape[0] // steps
    w = weights.repeat(count)
    gradients = total_gradients(adapter, rows, targets, kind)  # per layer (rows, P_l, n_l)
    chosen, chain, path, ranked = None, None, [], []
    for l in range(adapter.num_layers):
        if l == 0:  # the chain so far, carried to every candidate: (rows, P_l, n_l)
            reach = directional_derivatives(adapter, rows, 0, input_tangent=tangent)
        else:
            reach = directional_derivatives(adapter, rows, l, neuron=(l - 1, chosen, chain))
        scores = w[:, None] * (reach * gradients[l]).sum(1)
        ranked.append(scores.reshape(count, steps, -1).sum(1))
        best = ranked[-1].argmax(-1)  # first index on ties
        chosen = best.repeat_interleave(steps)
        chain = reach.gather(2, chosen[:, None, None].expand(-1, reach.shape[1], 1))[..., 0]
        path.append(best)
        final = scores.gather(1, chosen[:, None])[:, 0].reshape(count, steps).sum(1)
    return torch.stack(path, dim=1), final, ranked


def _method(adapter, pixels, clean, config, k, options) -> MethodOutput:
    path, influence, scores = lu_path(adapter, pixels, clean, config, with_scores=True)
    return MethodOutput(path, {"influence": influence.tolist()}, scores=scores)


METHOD = PathMethod(
    "influence-pattern-lu",
    "Influence Pattern as Lu et al. define it (the paper's Eq. 9 and Alg. 2): greedy path "
    "maximising the integrated product of the chain of derivatives",
    _method,
    options=LuOptions,
    title="Influence Pattern (Lu) path",
)
