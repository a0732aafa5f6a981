"""The one interface every path method implements, and how a method owns its options.

A path method maps (adapter, pixels, clean pass, attribution config, K, its options) to a path:
a LongTensor (images, layers, K) of neuron indices, K per layer, plus optional per-image extras
that go into the records.  Each method lives in its own file with its options -- a frozen
dataclass derived from :class:`MethodOptions`, whose fields carry their defaults, validation
(``__post_init__``) and help text (``metadata={"help": ...}``) -- and is listed once in
:mod:`neuronpath.methods.registry`.  The command line builds each method's flags from its
options class, a run's manifest records them under the method's name, and the Python API takes
them per method (``find_paths(..., methods={"jas": JASOptions(...), "activation": None})``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch

from ..engine.ablation import SELECTABLE
from ..engine.adapter import ModelAdapter
from ..engine.attribution import AttributionConfig, CleanPass
from ..errors import InputError, option
from ..options import FLOAT_LIMIT


@dataclass(frozen=True)
class MethodOptions:
    """The options of a method; this base class has none.  Subclass it as a frozen dataclass
    next to the method; give each field a default and ``metadata={"help": ...}`` (and
    ``"type"`` for a number, ``"choices"`` for a fixed set)."""

    def check(self, k: int) -> None:
        """Refuse options that cannot go with K neurons per layer (before any work)."""

    def scores_undefined(self, units: str) -> str | None:
        """Why this method, with these options, has no per-layer ranking of every candidate
        to save (``find --save-scores``) on paths of ``units``; None: it has one."""
        return None

    @property
    def needs_reference(self) -> bool:
        """Whether these options need a reference set's mean of every unit
        (``find --reference``; it reaches the method as ``CleanPass.reference``)."""
        return False

    def selection(self, objective: str, reference: str | None) -> dict | None:
        """The criterion these options choose a path by, where the choice is made by an
        intervention (:func:`~neuronpath.engine.ablation.selection_criterion`), given the run's
        objective and the reference images' digest; None for a method that does not (an
        attribution ranks, it does not intervene)."""
        return None

    @property
    def final_terms_last_only(self) -> bool:
        """Whether the run's final JAS counts only the last of each layer's K neurons (the released
        TopK code's rule, ``docs/official-code.md#topk-and-pruning``)."""
        return False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def option_fields(cls) -> tuple:
        """The fields the command line turns into flags."""
        return fields(cls)


@dataclass
class MethodOutput:
    """A method's paths, its per-image extras, and (where it ranks every candidate of a layer)
    the scores it ranked: (images, layers, widest layer), the path being each layer's top K of
    them (``-inf`` past a narrower layer's width; ``find --save-scores`` stores them)."""

    path: torch.Tensor  # (images, layers, K)
    extras: dict[str, list] = field(default_factory=dict)  # per-image values, by record key
    scores: torch.Tensor | None = None


@dataclass(frozen=True)
class PathMethod:
    """A named path method: ``method(adapter, pixels, clean, config, k, options)``.

    ``title`` names its path in summaries ("JAS path"); ``top_neurons`` says what a record's
    ``top`` extra holds, for methods that keep each image's top neurons (Fig. 2's data);
    ``units`` the unit sets it is defined for (``find --units``), and ``undefined`` why not for
    the others."""

    name: str
    summary: str  # one line for --help and the docs, citing the paper
    run: Callable[
        [ModelAdapter, torch.Tensor, CleanPass, AttributionConfig, int, MethodOptions], MethodOutput
    ]
    options: type[MethodOptions] = MethodOptions
    title: str = ""
    top_neurons: str = ""
    units: tuple[str, ...] = ("neurons", "heads", "sae")
    undefined: str = (
        "its scores are not comparable between a neuron and a head, so it cannot choose "
        "between them"
    )

    def __call__(
        self,
        adapter: ModelAdapter,
        pixels: torch.Tensor,
        clean: CleanPass,
        config: AttributionConfig = AttributionConfig(),
        k: int = 1,
        options: MethodOptions | None = None,
    ) -> MethodOutput:
        return self.run(adapter, pixels, clean, config, k, options or self.options())

    @property
    def path_title(self) -> str:
        return self.title or f"{self.name} path"


@dataclass(frozen=True)
class Control:
    """A registered control: paths or kept neurons drawn at random, seeded, to compare the
    methods' against.  ``path(image, seed, layers, widths, k)`` is one image's (layers, k)
    path for ``evaluate``; ``keep(name, seed, layers, widths, t)`` a class's kept neurons per
    layer for ``prune``; ``matched(levels, path, generator, window, edges)`` a path matched to
    another on one image (a control that needs the image's activations)."""

    name: str
    summary: str
    path: Callable[..., torch.Tensor] | None = None
    keep: Callable[..., list[list[int]]] | None = None
    matched: Callable[..., tuple[torch.Tensor, int]] | None = None


def reference_of(clean: CleanPass, needed_by: str) -> list[torch.Tensor]:
    """The reference means a method needs (``find --reference``, ``CleanPass.reference``), or
    one line why there are none."""
    if clean.reference is None:
        raise InputError(
            f"{option('reference')}: {needed_by} starts from each unit's mean over a reference "
            f"set; expected a folder of reference images (not the run's)"
        )
    return clean.reference


def check_fields(
    options: MethodOptions,
    choices: dict[str, Sequence[str]] = {},  # noqa: B006 (read only)
    counts: Sequence[str] = (),
    positive: Sequence[str] = (),
) -> None:
    """Refuse, with one line naming the flag, an option outside its ``choices``, a ``counts``
    option that is not an integer >= 1, or a ``positive`` one that is not a number > 0."""
    for name, allowed in choices.items():
        if getattr(options, name) not in allowed:
            raise InputError(
                f"{option(name)}: expected one of {tuple(allowed)}, got {getattr(options, name)!r}"
            )
    for name in counts:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{option(name)}: expected a positive integer, got {value!r}")
    for name in positive:
        value = getattr(options, name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not numeric or not 0 < value <= FLOAT_LIMIT:
            raise InputError(
                f"{option(name)}: expected a positive number no larger than "
                f"{FLOAT_LIMIT:.3g}, got {value!r}"
            )


def ablation_field() -> object:
    """The ``ablation`` option of a method that ablates units (``causal``, ``learned``)."""
    return field(
        default="mean",
        metadata={
            "choices": SELECTABLE,
            "help": "what an ablated unit takes: its mean over find --reference's images, or zero",
        },
    )


def ablated_values(adapter, clean: CleanPass, ablation: str, flag: str) -> list[torch.Tensor]:
    """Per layer, (1, positions, coords): what an ablated unit takes under ``ablation`` (zero,
    or the reference mean, which the option ``flag`` asked for) when a method selects by it."""
    if ablation == "mean":
        means = reference_of(clean, f"{option(flag)} mean")
        return [m.to(adapter.device, adapter.dtype)[None] for m in means]
    return [
        torch.zeros_like(adapter.units(l).source(clean.coordinates(l)[:1]))
        for l in range(adapter.num_layers)
    ]
