"""Units: how the coordinates of a site group into the units a path is made of.

A site's hidden state has ``coords`` coordinates per token (:mod:`neuronpath.engine.sites`).  A
*unit* is a group of them, scaled, removed and scored as one:

* a **neuron**: one coordinate of a block's FFN hidden state (the paper's unit);
* an **attention head**: one head's slice of a block's attention output before the output
  projection, ``size`` (= head_dim) contiguous coordinates -- every supported family lays the
  heads out head-major there.
* a **sparse-autoencoder latent**: :class:`neuronpath.engine.sae.LatentMap`, with the same
  interface (values, project, embed, embed_delta, multiply, ablate, source), moves the site along
  the latent's decoder row and keeps the SAE's error term.

Every score of the paper is written for scalar units, so a head is read as one: its **value**
at a token is the norm of its slice, c = |z|, and scaling the head by alpha moves it along its
own direction, alpha z = (alpha c) z/|z|.  A head is therefore a neuron of a rotated basis in
which its clean direction z/|z| is a basis vector: its gradient is the derivative along that
direction, <z/|z|, dF/dz>, and value x gradient = <z, dF/dz>, the integrated-gradient
contribution of scaling the whole head -- so Eq. 2-3 hold unchanged for sets of neurons, of
heads, or of both, and a head's score and a neuron's are contributions to the same F.  A neuron
is the same construction with a one-coordinate group, where every map below is the identity.

In the engine every value, gradient, mask and factor lives in unit space; coordinates appear
only where a hook writes into the model (:meth:`UnitMap.embed`, :meth:`UnitMap.expand`) and
where an ablation copies whole coordinate vectors (a reference mean, another image's values).

A head's value could as well be read in another unit (``scale``: c = scale |z|, e.g. |z|/sqrt(d));
value x gradient, and so every integrated-gradient contribution, does not change with it, and
no score of neuronpath does: the JAS of a set holding both kinds is a product of sums *per kind*
(:func:`neuronpath.engine.attribution.set_scores`), so the scale of one kind never multiplies a
quantity of the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..pathformat import ABSENT

KINDS = ("neuron", "head", "latent")


@dataclass(frozen=True)
class UnitMap:
    """``count`` units of ``size`` coordinates each at one site (see the module docstring)."""

    kind: str  # "neuron" or "head"
    count: int | None  # None: one neuron per coordinate, however many the site has
    size: int = 1
    scale: float = 1.0  # a head's value is scale x its norm (neurons: always 1)

    @classmethod
    def neurons(cls, count: int | None) -> "UnitMap":
        return cls("neuron", count, 1)

    @classmethod
    def heads(cls, count: int, size: int, scale: float = 1.0) -> "UnitMap":
        return cls("head", count, size, scale)

    @property
    def coords(self) -> int:
        return self.count * self.size

    @property
    def identity(self) -> bool:
        return self.size == 1

    def _groups(self, z: torch.Tensor) -> torch.Tensor:
        return z.unflatten(-1, (self.count, self.size))

    def directions(self, z: torch.Tensor) -> torch.Tensor:
        """(..., coords) -> (..., count, size): each unit's unit vector (zero where its slice
        is zero)."""
        groups = self._groups(z)
        norm = groups.norm(dim=-1, keepdim=True)
        return torch.where(norm > 0, groups / norm.clamp_min(torch.finfo(norm.dtype).tiny), 0.0)

    def values(self, z: torch.Tensor) -> torch.Tensor:
        """Unit values (..., count) of coordinates (..., coords): the coordinates themselves for
        neurons, each head's norm."""
        return z if self.identity else self.scale * self._groups(z).norm(dim=-1)

    def project(self, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A gradient or tangent in coordinates (..., coords) read along each unit's direction
        in ``z``: (..., count)."""
        if self.identity:
            return g
        return (self._groups(g) * self.directions(z)).sum(-1) / self.scale

    def embed(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Unit values or deltas (..., count) placed along the unit directions of ``z``
        (..., coords): coordinates (..., coords).  ``embed(values(z), z) == z``."""
        if self.identity:
            return c
        return (c[..., None] / self.scale * self.directions(z)).flatten(-2)

    def embed_delta(self, d: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Unit deltas (..., count) as a change of the coordinates ``z`` (linear in ``d``;
        for neurons and heads the same map as :meth:`embed`)."""
        return self.embed(d, z)

    def expand(self, f: torch.Tensor) -> torch.Tensor:
        """A factor or mask per unit (..., count) -> per coordinate (..., coords)."""
        return f if self.identity else f.repeat_interleave(self.size, dim=-1)

    def multiply(self, z: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """``z`` (..., coords) with each unit multiplied by its factor (..., count)."""
        return z * self.expand(factors)

    def ablate(self, z, multiplier, ablated, source) -> torch.Tensor:
        """``z * multiplier + source * ablated`` per unit: ``source`` (..., coords) is what an
        ablated unit takes (:meth:`source` of zeros, a mean, another image)."""
        return z * self.expand(multiplier) + source * self.expand(ablated)

    def source(self, z: torch.Tensor) -> torch.Tensor:
        """What an ablation copies from coordinates ``z``: the coordinates themselves (an SAE's
        latents copy their values, :class:`neuronpath.engine.sae.LatentMap`)."""
        return z

    def describe(self) -> dict:
        scale = {} if self.scale == 1.0 else {"scale": self.scale}
        return {"kind": self.kind, "count": self.count, "size": self.size, **scale}


def scatter_units(
    index: torch.Tensor, count: int, values, fill: float = 0.0, dtype=torch.float64
) -> torch.Tensor:
    """(items, K) unit indices -> (items, count) holding ``fill``, and ``values`` (a number or
    (items, K)) at the indices; ``ABSENT`` entries write nothing."""
    padded = torch.full((index.shape[0], count + 1), fill, dtype=dtype, device=index.device)
    values = torch.as_tensor(values, dtype=dtype, device=index.device).expand(index.shape)
    return padded.scatter_(1, torch.where(index == ABSENT, count, index), values)[:, :count]


def unit_mask(index: torch.Tensor, count: int, dtype=torch.float64) -> torch.Tensor:
    """(items, K) unit indices -> (items, count) 0/1 masks (``ABSENT`` entries mark nothing)."""
    return scatter_units(index, count, 1.0, 0.0, dtype)


def gather_units(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (items, tokens, count), index (items, K) -> (items, tokens), the sum over the K units
    (an ``ABSENT`` entry adds nothing)."""
    padded = torch.nn.functional.pad(x, (0, 1))
    where = torch.where(index == ABSENT, x.shape[-1], index)
    return padded.gather(2, where[:, None, :].expand(-1, x.shape[1], -1)).sum(-1)
