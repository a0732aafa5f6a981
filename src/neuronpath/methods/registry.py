"""Every path method and control by name: ``find``, ``evaluate``, ``prune``, ``report``, the
command line and the docs read these tables.

Adding a method is one new file in this folder (copy ``activation.py``, or ``jas.py`` for a
method with options) and one line in :data:`REGISTRY` -- or, from outside the package,
``register(method)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields as dataclass_fields

from ..errors import InputError, option
from . import (
    activation,
    causal,
    controls,
    delta_activation,
    influence_pattern,
    influence_pattern_lu,
    jas,
    jas_mean,
    knowledge,
    learned,
)
from .base import Control, MethodOptions, PathMethod

REGISTRY: dict[str, PathMethod] = {
    method.name: method
    for method in (
        jas.METHOD,
        activation.METHOD,
        influence_pattern.METHOD,
        influence_pattern_lu.METHOD,
        knowledge.METHOD,
        causal.METHOD,
        learned.METHOD,
        jas_mean.METHOD,
        delta_activation.METHOD,
    )
}
CONTROLS: dict[str, Control] = {c.name: c for c in (controls.RANDOM, controls.MATCHED)}
DEFAULT_METHODS = ("jas", "activation")


def register(method: PathMethod) -> PathMethod:
    """Add a path method (for example one defined outside the package); its options' flags
    must not clash with another method's."""
    if method.name in REGISTRY or method.name in CONTROLS:
        raise InputError(f"register: a method or control named {method.name!r} exists already")
    taken = {
        f.name: other.name for other in REGISTRY.values() for f in other.options.option_fields()
    }
    clash = [f.name for f in method.options.option_fields() if f.name in taken]
    if clash:
        raise InputError(
            f"register: option {clash[0]!r} of {method.name!r} is already an option "
            f"of {taken[clash[0]]!r}"
        )
    REGISTRY[method.name] = method
    return method


def check_methods(methods: Iterable[str]) -> list[str]:
    """The methods, duplicates dropped, each checked against the registry."""
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown or not methods:
        raise InputError(
            f"{option('methods')}: unknown {unknown}; expected some of {', '.join(REGISTRY)}"
            if unknown
            else f"{option('methods')}: expected at least one of {', '.join(REGISTRY)}"
        )
    return methods


def method_options(
    methods: Iterable[str] | Mapping[str, MethodOptions | None],
) -> dict[str, MethodOptions]:
    """``{method: its options}`` from a list of names (every method's defaults) or a mapping
    (``None``: the defaults), each checked against the registry and its options class."""
    given = dict(methods) if isinstance(methods, Mapping) else dict.fromkeys(methods)
    out = {}
    for name in check_methods(given):
        cls = REGISTRY[name].options
        options = given[name] if given[name] is not None else cls()
        if not isinstance(options, cls):
            raise InputError(
                f"{option('methods')}: the options of {name!r} must be a "
                f"{cls.__name__}, got {type(options).__name__}"
            )
        out[name] = options
    return out


def selection_criteria(
    options: Mapping[str, Mapping], objective: str, reference: str | None
) -> dict[str, dict]:
    """``{method: the criterion it chose its path by}`` for the methods of a run whose choice
    is made by an intervention (``options``: each method's options as the run recorded them;
    ``objective``: the run's F; ``reference``: the reference images' digest, if any)."""
    out = {}
    for name, recorded in options.items():
        if name not in REGISTRY:
            continue
        cls = REGISTRY[name].options
        known = {f.name for f in dataclass_fields(cls)}
        chosen = cls(**{k: v for k, v in (recorded or {}).items() if k in known})
        criterion = chosen.selection(objective, reference)
        if criterion is not None:
            out[name] = criterion
    return out


def method_title(name: str) -> str:
    """How summaries name a method's path ("JAS path"); unregistered names as they are."""
    return REGISTRY[name].path_title if name in REGISTRY else f"{name} path"
