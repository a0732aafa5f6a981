"""Sparse-autoencoder latents as path units (issue 38).

A sparse autoencoder (SAE) of a site reads its coordinates x (d_in per token) and writes ``width``
latent activations

    f(x) = act(W_enc^T (n(x) - b_dec [if it subtracts b_dec]) + b_enc),

where ``act`` is a ReLU, a TopK (the k largest pre-activations kept, Gao et al. 2024) or a
JumpReLU (a pre-activation kept where it exceeds its latent's threshold), and n(x) is the input
normalisation the SAE was trained with (none; ``constant_norm_rescale``: x sqrt(d_in)/|x|;
``layer_norm``: (x - mean)/(std + eps)).  Its decoder rebuilds n^-1(f W_dec + b_dec).

**A latent as a unit.**  Latent i's value at a token is f_i(x).  Scaling it by alpha moves the
site along its decoder direction and leaves everything else of x where it was:

    x  ->  x + (alpha - 1) f_i(x) s(x) d_i,

with d_i the i-th row of W_dec and s(x) the decoder's un-normalisation of that token (1 with no
normalisation, |x|/sqrt(d_in) for ``constant_norm_rescale``, std(x) for ``layer_norm``).  The
site is *not* replaced by the SAE's reconstruction: x - decode(f(x)), the SAE's error, stays in
the model untouched, so with alpha = 1 everywhere the model computes exactly what it computed
without the SAE (bit for bit), and a path's effect is the effect of its latents alone, not of
swapping the site for an imperfect copy.  Several latents move additively,
x + s(x) sum_i (c_i - f_i(x)) d_i for new values c, which is how every intervention of
:mod:`neuronpath.engine.interventions` writes them (:class:`LatentMap`).

The derivative of F along latent i is <s(x) d_i, dF/dx>: value x gradient is the
integrated-gradient contribution of scaling the latent, and Eq. 2-3 hold for sets of latents as
they do for neurons and heads (:mod:`neuronpath.engine.units`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

NORMALISATIONS = ("none", "constant_norm_rescale", "layer_norm")
SAE_SITES = ("ffn", "resid")
LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True, eq=False)
class SparseAutoencoder:
    """One SAE's weights and encoder settings (see the module docstring)."""

    w_enc: torch.Tensor  # (d_in, width)
    b_enc: torch.Tensor  # (width,)
    w_dec: torch.Tensor  # (width, d_in)
    b_dec: torch.Tensor  # (d_in,)
    activation: str = "relu"
    k: int | None = None  # topk: latents kept per token
    threshold: torch.Tensor | None = None  # jumprelu: (width,)
    topk_relu: bool = True  # topk: a ReLU on the kept values (SAELens; saev keeps them as they are)
    subtract_b_dec: bool = True  # the encoder reads x - b_dec (SAELens's apply_b_dec_to_input)
    normalize: str = "none"
    site: str = "ffn"
    origin: dict = field(default_factory=dict)  # format, file, layer: where it was read from

    @property
    def d_in(self) -> int:
        return self.w_enc.shape[0]

    @property
    def width(self) -> int:
        return self.w_enc.shape[1]

    def to(self, device=None, dtype=None) -> "SparseAutoencoder":
        def move(t):
            return None if t is None else t.to(device=device, dtype=dtype)

        return replace(
            self,
            w_enc=move(self.w_enc),
            b_enc=move(self.b_enc),
            w_dec=move(self.w_dec),
            b_dec=move(self.b_dec),
            threshold=move(self.threshold),
        )

    def _like(self, x: torch.Tensor) -> "SparseAutoencoder":
        same = self.w_enc.device == x.device and self.w_enc.dtype == x.dtype
        return self if same else self.to(x.device, x.dtype)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """n(x): the input normalisation the SAE was trained with."""
        if self.normalize == "constant_norm_rescale":
            return x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True)
        if self.normalize == "layer_norm":
            centred = x - x.mean(-1, keepdim=True)
            return centred / (centred.std(-1, keepdim=True) + LAYER_NORM_EPS)
        return x

    def out_scale(self, x: torch.Tensor) -> torch.Tensor:
        """s(x), (..., 1): how the decoder's output is scaled back to the site's units."""
        if self.normalize == "constant_norm_rescale":
            return x.norm(dim=-1, keepdim=True) / (self.d_in**0.5)
        if self.normalize == "layer_norm":
            return (x - x.mean(-1, keepdim=True)).std(-1, keepdim=True)
        return torch.ones_like(x[..., :1])

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        sae = self._like(x)
        inputs = sae.normalised(x)
        if sae.subtract_b_dec:
            inputs = inputs - sae.b_dec
        return inputs @ sae.w_enc + sae.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """f(x): (..., d_in) -> (..., width)."""
        pre = self.pre_activations(x)
        if self.activation == "relu":
            return pre.relu()
        if self.activation == "jumprelu":
            return pre.relu() * (pre > self._like(x).threshold)
        top = pre.topk(self.k, dim=-1)
        kept = top.values.relu() if self.topk_relu else top.values
        return torch.zeros_like(pre).scatter(-1, top.indices, kept)

    def decode(self, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of ``x`` from latents ``f``, in the site's units."""
        sae = self._like(x)
        out = f @ sae.w_dec + sae.b_dec
        if self.normalize == "layer_norm":
            return out * sae.out_scale(x) + x.mean(-1, keepdim=True)
        return out * sae.out_scale(x)

    def describe(self) -> dict:
        return {
            "width": self.width,
            "d_in": self.d_in,
            "activation": self.activation,
            **({"k": self.k} if self.activation == "topk" else {}),
            "subtract_b_dec": self.subtract_b_dec,
            "normalize": self.normalize,
            "site": self.site,
            **self.origin,
        }


@dataclass(frozen=True, eq=False)
class LatentMap:
    """The latents of one SAE as the units of its site: the interface of
    :class:`neuronpath.engine.units.UnitMap`, with ablation sources in latent space (a latent
    ablated to the reference mean takes the mean of its own values, and zero ablation sets it
    to zero, not to the latents of a zero vector)."""

    sae: SparseAutoencoder
    kind: str = "latent"
    size: int = 1
    scale: float = 1.0
    identity: bool = False

    @property
    def count(self) -> int:
        return self.sae.width

    @property
    def coords(self) -> int:
        return self.sae.d_in

    def values(self, z: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(z)

    def project(self, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        sae = self.sae._like(g)
        return sae.out_scale(z) * (g @ sae.w_dec.T)

    def embed_delta(self, d: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Latent deltas (..., width) as a change of coordinates (..., d_in)."""
        sae = self.sae._like(z)
        return sae.out_scale(z) * (d.to(z.dtype) @ sae.w_dec)

    def embed(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``z`` with its latents moved to ``c``: z + s(z) (c - f(z)) W_dec (the error kept)."""
        return z + self.embed_delta(c - self.values(z), z)

    def multiply(self, z: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        return z + self.embed_delta((factors - 1) * self.values(z), z)

    def ablate(self, z, multiplier, ablated, source) -> torch.Tensor:
        values = self.values(z)
        return z + self.embed_delta(values * (multiplier - 1) + source * ablated, z)

    def source(self, z: torch.Tensor) -> torch.Tensor:
        return self.values(z)

    def describe(self) -> dict:
        return {"kind": self.kind, "count": self.count, "size": 1, "sae": self.sae.describe()}
