"""Token policies: at which token(s) of a block's FFN hidden state a neuron lives.

CLS-token classifiers (ViT, DeiT) read and edit a neuron at one token (the CLS token,
index 0).  Global-pool classifiers (MAE fine-tunes) use all patch tokens jointly (spec §4):
the neuron's value is then a vector over those tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenPolicy:
    """A contiguous range of token positions ``[start, stop)``; ``stop=None`` means 'to the end'."""

    name: str
    start: int
    stop: int | None

    @classmethod
    def cls(cls) -> "TokenPolicy":
        return cls("cls", 0, 1)

    @classmethod
    def index(cls, i: int, name: str | None = None) -> "TokenPolicy":
        if i < 0:
            raise ValueError(f"token: expected a non-negative token index, got {i}")
        return cls(name or f"index:{i}", i, i + 1)

    @classmethod
    def patches(cls, prefix: int = 1) -> "TokenPolicy":
        """All tokens after the ``prefix`` special tokens (CLS, distillation ...)."""
        return cls(f"patches:{prefix}", prefix, None)

    @classmethod
    def parse(cls, text: str, *, distillation_index: int | None = None) -> "TokenPolicy":
        """Parse ``cls``, ``distillation``, ``patches[:PREFIX]`` or an integer index."""
        text = str(text).strip()
        if text == "cls":
            return cls.cls()
        if text == "distillation":
            if distillation_index is None:
                raise ValueError("token: this model has no distillation token")
            return cls.index(distillation_index, "distillation")
        if text.startswith("patches"):
            _, _, prefix = text.partition(":")
            return cls.patches(int(prefix) if prefix else 1)
        if text.startswith("index:"):
            text = text[len("index:"):]
        try:
            return cls.index(int(text))
        except ValueError:
            raise ValueError(f"token: expected cls, distillation, patches[:N] or a token index, "
                             f"got {text!r}") from None

    @property
    def single(self) -> bool:
        return self.stop is not None and self.stop - self.start == 1

    def select(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, tokens, n) -> (rows, tokens_selected, n)."""
        return hidden[:, self.start:self.stop]

    def insert(self, hidden: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Out-of-place copy of ``hidden`` with the selected tokens replaced by ``value``
        (gradients flow to ``value``; the replaced rows no longer depend on ``hidden``)."""
        stop = hidden.shape[1] if self.stop is None else self.stop
        return torch.cat([hidden[:, :self.start], value.to(hidden.dtype), hidden[:, stop:]], dim=1)
