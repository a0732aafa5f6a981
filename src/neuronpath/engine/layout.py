"""How a block's token positions map to places in the image, so that a neuron's values over
the tokens can be drawn over the image it was read on.

Each model adapter states its layout per block (:meth:`ModelAdapter.layout`); nothing here
guesses from a token count alone.  A layout is

* ``grid``: ``prefix`` special tokens (CLS, distillation, registers) and then a height x width
  grid of patches, in raster order (ViT, DeiT, BEiT, CLIP, SigLIP, DINOv2; Swin, whose windows
  are merged back into raster order before the FFN; CvT and PVT per stage), or in a stated
  ``order`` (Hiera, whose tokens are "unrolled" so that pooling windows are contiguous);
* ``none``: no map, with the reason (a model whose tokens are not image patches, or an
  adapter that states no layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a block sits in the image (see the module docstring)."""

    kind: str  # "grid" or "none"
    prefix: int = 0
    height: int = 0
    width: int = 0
    order: tuple[int, ...] | None = None  # raster cell of each grid token (None: raster order)
    why: str = ""  # for "none": why there is no map

    @classmethod
    def grid(
        cls, prefix: int, height: int, width: int, order: Sequence[int] | None = None
    ) -> "TokenLayout":
        return cls("grid", prefix, height, width, None if order is None else tuple(order))

    @classmethod
    def none(cls, why: str) -> "TokenLayout":
        return cls("none", why=why)

    @classmethod
    def raster(cls, tokens: int, prefix: int, image_hw: tuple[int, int]) -> "TokenLayout":
        """``prefix`` special tokens, then a raster grid with the image's aspect ratio
        (its size follows from the token count); ``none`` if the remaining tokens do not form
        such a grid."""
        cells = tokens - prefix
        height, width = image_hw
        columns = math.isqrt(max(cells * width // max(height, 1), 0))
        for w in (columns, columns + 1):
            if w > 0 and cells % w == 0 and (cells // w) * width == w * height:
                return cls.grid(prefix, cells // w, w)
        return cls.none(
            f"{tokens} tokens are not {prefix} special tokens and a "
            f"{height}:{width} grid of patches"
        )

    def image_map(self, values: torch.Tensor) -> torch.Tensor | None:
        """A block's values over its tokens, (tokens,) -> (height, width) over the image, or
        None for a layout without a map."""
        if self.kind != "grid":
            return None
        cells = values[self.prefix :]
        if cells.shape[0] != self.height * self.width:
            raise ValueError(
                f"layout: expected {self.prefix + self.height * self.width} "
                f"tokens, got {values.shape[0]}"
            )
        if self.order is not None:
            placed = torch.empty_like(cells)
            placed[torch.as_tensor(self.order, device=cells.device)] = cells
            cells = placed
        return cells.reshape(self.height, self.width)

    def cell(self, token: int) -> list[int] | None:
        """The (row, column) in the image grid of token ``token`` (None: a special token, or a
        layout without a grid)."""
        if self.kind != "grid" or token < self.prefix:
            return None
        cell = token - self.prefix
        cell = self.order[cell] if self.order is not None else cell
        return [cell // self.width, cell % self.width]

    def describe(self) -> dict:
        if self.kind != "grid":
            return {"kind": self.kind, "why": self.why}
        return {
            "kind": "grid",
            "prefix": self.prefix,
            "height": self.height,
            "width": self.width,
            "order": "raster" if self.order is None else "stated",
        }
