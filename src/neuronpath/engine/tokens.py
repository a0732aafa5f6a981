"""Token policies: at which token positions of a block's FFN hidden state a neuron lives.

The neuron is read and edited where the classifier head reads (docs/official-code.md#mae): at the
CLS token for CLS-token classifiers (ViT, DeiT); at all patch tokens jointly for mean-pooled heads
(MAE, BEiT, CLIP's classifier); at every token for heads that pool all of them (SigLIP, Swin); at
CLS and the patch tokens for DINOv2, at CLS and the distillation token for DeiT with teacher.  With
several positions a neuron's value is a vector over them, and each score is formed per position and
summed (see ``docs/semantics.md``).

A policy is a set of positions written as sorted, disjoint half-open spans ``[start, stop)``
(``stop=None``: to the last token), e.g. CLS + patches after 4 register tokens is
``((0, 1), (5, None))``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError, option

Span = tuple[int, "int | None"]


def _merge(spans) -> tuple[Span, ...]:
    """Sort spans and merge overlapping or adjacent ones (``None`` = open end)."""
    merged: list[list] = []
    for start, stop in sorted(spans, key=lambda s: s[0]):
        if merged and (merged[-1][1] is None or start <= merged[-1][1]):
            last = merged[-1]
            last[1] = None if None in (last[1], stop) else max(last[1], stop)
        else:
            merged.append([start, stop])
    return tuple((a, b) for a, b in merged)


@dataclass(frozen=True)
class TokenPolicy:
    """A named set of token positions (see the module docstring)."""

    name: str
    spans: tuple[Span, ...]

    def __post_init__(self):
        if not self.spans or any(a < 0 or (b is not None and b <= a) for a, b in self.spans):
            raise InputError(
                f"{option('token')}: {self.name!r} is not a set of token positions "
                f"(spans {self.spans})"
            )
        object.__setattr__(self, "spans", _merge(self.spans))

    @classmethod
    def cls(cls) -> "TokenPolicy":
        return cls("cls", ((0, 1),))

    @classmethod
    def index(cls, i: int, name: str | None = None) -> "TokenPolicy":
        if i < 0:
            raise InputError(f"{option('token')}: expected a non-negative token index, got {i}")
        return cls(name or f"index:{i}", ((i, i + 1),))

    @classmethod
    def patches(cls, prefix: int = 1) -> "TokenPolicy":
        """All tokens after the ``prefix`` special tokens (CLS, distillation, registers ...)."""
        return cls(f"patches:{prefix}", ((prefix, None),))

    @classmethod
    def all(cls) -> "TokenPolicy":
        """Every token (SigLIP's mean pool, Swin's average pool)."""
        return cls("all", ((0, None),))

    @classmethod
    def from_positions(cls, positions, count: int, name: str | None = None) -> "TokenPolicy":
        """The policy of a set of positions among ``count`` tokens (a span reaching the last
        token is left open), named after its shape unless ``name`` is given."""
        positions = sorted(set(int(p) for p in positions))
        if not positions:
            raise InputError(f"{option('token')}: no positions")
        spans = _merge((p, p + 1) for p in positions)
        spans = tuple((a, None if b == count else b) for a, b in spans)
        if name is None:
            names = {((0, 1),): "cls", ((0, None),): "all", ((1, None),): "patches:1"}
            name = names.get(spans) or "positions:" + ",".join(
                f"{a}" if b == a + 1 else f"{a}-{'' if b is None else b - 1}" for a, b in spans
            )
        return cls(name, spans)

    @classmethod
    def parse(cls, text: str, *, distillation_index: int | None = None) -> "TokenPolicy":
        """Parse ``cls``, ``distillation``, ``patches[:PREFIX]``, ``all``, a token index,
        ``positions:A,B-C,D-`` (indices and inclusive ranges, ``D-`` to the last token), or
        several of them joined by ``+`` (``cls+distillation``, ``cls+patches:5``)."""
        text = str(text).strip()
        if "+" in text:
            parts = [cls.parse(p, distillation_index=distillation_index) for p in text.split("+")]
            return cls(text, tuple(s for p in parts for s in p.spans))
        if text == "cls":
            return cls.cls()
        if text == "all":
            return cls.all()
        if text == "distillation":
            if distillation_index is None:
                raise InputError(f"{option('token')}: this model has no distillation token")
            return cls.index(distillation_index, "distillation")
        if text.startswith("patches"):
            _, _, prefix = text.partition(":")
            try:
                return cls.patches(int(prefix) if prefix else 1)
            except ValueError:
                raise InputError(
                    f"{option('token')}: expected patches or patches:N, got {text!r}"
                ) from None
        if text.startswith("positions:"):
            try:
                spans = [
                    (int(a), int(b) + 1 if b else None) if sep else (int(a), int(a) + 1)
                    for a, sep, b in (
                        item.partition("-") for item in text[len("positions:") :].split(",")
                    )
                ]
                return cls(text, tuple(spans))
            except ValueError:
                raise InputError(
                    f"{option('token')}: expected positions:A,B-C,D- (token indices and "
                    f"ranges), got {text!r}"
                ) from None
        if text.startswith("index:"):
            text = text[len("index:") :]
        try:
            return cls.index(int(text))
        except ValueError:
            raise InputError(
                f"{option('token')}: expected cls, distillation, patches[:N], all, a token "
                f"index, or several joined by '+'; got {text!r}"
            ) from None

    @property
    def start(self) -> int:
        """The first position."""
        return self.spans[0][0]

    @property
    def stop(self) -> int | None:
        """The end of the last span (None: the last token)."""
        return self.spans[-1][1]

    @property
    def single(self) -> bool:
        return len(self.spans) == 1 and self.stop is not None and self.stop - self.start == 1

    def positions(self, count: int) -> list[int]:
        """The positions among ``count`` tokens; an error if a span lies beyond them."""
        out = []
        for a, b in self.spans:
            if a >= count or (b is not None and b > count):
                raise InputError(
                    f"{option('token')}: {self.name!r} needs token positions up to "
                    f"{(b or a + 1) - 1}, but this model has {count} tokens "
                    f"(positions 0..{count - 1})"
                )
            out.extend(range(a, count if b is None else b))
        return out

    def select(self, hidden: torch.Tensor) -> torch.Tensor:
        """(rows, tokens, n) -> (rows, tokens_selected, n)."""
        if len(self.spans) == 1:
            return hidden[:, self.start : self.stop]
        return torch.cat([hidden[:, a:b] for a, b in self.spans], dim=1)

    def insert(self, hidden: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Out-of-place copy of ``hidden`` with the selected tokens replaced by ``value``
        (gradients flow to ``value``; the replaced rows no longer depend on ``hidden``)."""
        value = value.to(hidden.dtype)
        pieces, end, used = [], 0, 0
        for a, b in self.spans:
            b = hidden.shape[1] if b is None else b
            pieces += [hidden[:, end:a], value[:, used : used + b - a]]
            end, used = b, used + b - a
        pieces.append(hidden[:, end:])
        return torch.cat(pieces, dim=1)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "start": self.start,
            "stop": self.stop,
            "spans": [list(s) for s in self.spans],
        }
