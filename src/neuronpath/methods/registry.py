"""Every path method by name: ``find``, the command line and the docs read this one table.

Adding a method is one new file in this folder (copy ``activation.py``) and one line here.
"""

from __future__ import annotations

from ..errors import option
from . import activation, influence_pattern, jas, knowledge
from .base import PathMethod

REGISTRY: dict[str, PathMethod] = {method.name: method for method in (
    jas.METHOD,
    activation.METHOD,
    influence_pattern.METHOD,
    knowledge.METHOD,
)}
METHODS = tuple(REGISTRY)
DEFAULT_METHODS = ("jas", "activation")


def check_methods(methods) -> list[str]:
    """The methods, duplicates dropped, each checked against the registry."""
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"{option('methods')}: unknown {unknown}; expected some of {', '.join(REGISTRY)}")
    return methods
