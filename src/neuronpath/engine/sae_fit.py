"""Fitting a TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"), one optimiser step at a time, and the sums its quality is read from.

**The model.**  f(x) = TopK(ReLU(W_enc^T (x - b_dec) + b_enc)), x_hat = f W_dec + b_dec (the
encoder of :class:`neuronpath.engine.sae.SparseAutoencoder` with ``activation="topk"``).

**One step** on a batch x of B vectors:

* the loss is the squared error over the data's variance, sum |x - x_hat|^2 / (B v), v the mean
  squared distance of a vector from the data mean (measured once, on the first buffer);
* **AuxK** (Gao et al., sec. A.2): the latents that fired on none of the last ``dead_after``
  vectors are *dead*; the ``aux_k`` largest pre-activations among them (ReLU) rebuild the error,
  e_hat = a W_dec, and ``aux_coef`` |e - e_hat|^2 / |e - mean(e)|^2 is added, scaled down by
  min(1, dead / aux_k) while few are dead -- which gives dead latents a gradient again;
* W_dec's rows are kept at unit norm: the component of each row's gradient along the row is
  removed before the step, and the rows are renormalised after it;
* Adam, with the learning rate of :func:`learning_rate` (linear warm-up, constant, linear decay
  to zero).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Recipe:
    """How every SAE is fitted (module docstring)."""

    k: int
    lr: float
    aux_k: int | None  # None: half the site's width (Gao et al.'s d_in / 2)
    aux_coef: float
    dead_after: int  # vectors without firing before a latent counts as dead for AuxK
    warmup: float  # share of the steps the learning rate rises over
    decay: float  # share of the steps at the end it falls to zero over

    def describe(self) -> dict:
        return asdict(self)


def init_params(d_in: int, width: int, seed: int, layer: int, mean: torch.Tensor) -> dict:
    """Seeded start: W_dec's rows random unit vectors, W_enc = W_dec^T, b_enc = 0, b_dec the
    data mean ``mean``."""
    g = torch.Generator().manual_seed(seed * 1000 + layer)
    w_dec = torch.randn(width, d_in, generator=g, dtype=torch.float32)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)
    params = {
        "w_enc": w_dec.T.clone(),
        "b_enc": torch.zeros(width),
        "w_dec": w_dec,
        "b_dec": mean.float().clone(),
    }
    return {n: p.requires_grad_(True) for n, p in params.items()}


def learning_rate(recipe: Recipe, step: int, total: int) -> float:
    """The rate of step ``step`` (from 0) of ``total``: rising linearly over the first
    ``warmup`` share, falling linearly to zero over the last ``decay`` share."""
    warm = max(1, round(recipe.warmup * total))
    if step < warm:
        return recipe.lr * (step + 1) / warm
    fall = round(recipe.decay * total)
    if fall and step >= total - fall:
        return recipe.lr * max(0.0, (total - step) / fall)
    return recipe.lr


def train_step(params, optimiser, x, recipe: Recipe, since_fired, variance: float, lr: float):
    """One Adam step on the rows ``x`` (B, d_in); updates ``since_fired`` (width,) -- vectors
    seen since each latent last fired -- in place.  Returns (loss, auxiliary loss)."""
    rows = x.shape[0]
    pre = (x - params["b_dec"]) @ params["w_enc"] + params["b_enc"]
    top = pre.topk(recipe.k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    error = x - (f @ params["w_dec"] + params["b_dec"])
    loss = error.pow(2).sum() / (rows * variance)
    aux = torch.zeros(())
    dead = since_fired >= recipe.dead_after
    n_dead = int(dead.sum())
    if n_dead and recipe.aux_coef > 0:
        aux_k = recipe.aux_k or x.shape[1] // 2
        chosen = pre.masked_fill(~dead, float("-inf")).topk(min(aux_k, n_dead), dim=-1)
        a = torch.zeros_like(pre).scatter(-1, chosen.indices, chosen.values.relu())
        residual = error.detach()
        spread = (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-12)
        aux = (a @ params["w_dec"] - residual).pow(2).sum() / spread
        loss = loss + recipe.aux_coef * min(1.0, n_dead / aux_k) * aux
    optimiser.zero_grad()
    loss.backward()
    with torch.no_grad():
        w, g = params["w_dec"], params["w_dec"].grad
        g -= (g * w).sum(-1, keepdim=True) * w  # the part along each unit row changes nothing
        for group in optimiser.param_groups:
            group["lr"] = lr
    optimiser.step()
    with torch.no_grad():
        params["w_dec"] /= params["w_dec"].norm(dim=-1, keepdim=True)
        fired = (f > 0).any(0)
        since_fired += rows
        since_fired[fired] = 0
    return float(loss.detach()), float(aux.detach())


class FitSums:
    """Sums over a stream of vectors and their reconstructions, in float64: the fraction of
    variance unexplained centred on the mean of *all* the vectors (not of each batch), the
    mean number of active latents (L0) and how often each latent fires."""

    def __init__(self, width: int):
        self.n = 0
        self.total = None  # sum of x
        self.square = 0.0  # sum of |x|^2
        self.error = 0.0  # sum of |x - x_hat|^2
        self.active = 0  # sum of L0
        self.fires = torch.zeros(width, dtype=torch.long)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> None:
        x, x_hat = x.double().reshape(-1, x.shape[-1]), x_hat.double().reshape(-1, x.shape[-1])
        f = f.reshape(-1, f.shape[-1])
        self.n += x.shape[0]
        self.total = x.sum(0) if self.total is None else self.total + x.sum(0)
        self.square += float(x.pow(2).sum())
        self.error += float((x - x_hat).pow(2).sum())
        on = f > 0
        self.active += int(on.sum())
        self.fires += on.sum(0).cpu()

    def fvu(self) -> float:
        variance = self.square - float(self.total.pow(2).sum()) / self.n
        return self.error / max(variance, 1e-300)

    def l0(self) -> float:
        return self.active / self.n

    def dead(self) -> float:
        """Share of latents that fired on none of the vectors."""
        return float((self.fires == 0).double().mean())

    def dense(self, share: float = 0.1) -> float:
        """Share of latents that fired on more than ``share`` of the vectors."""
        return float((self.fires > share * self.n).double().mean())
