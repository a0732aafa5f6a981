"""Path methods, one file each behind one interface (:mod:`.base`), listed in :mod:`.registry`
with the controls they are compared with."""

from .activation import activation_path
from .base import Control, MethodOptions, MethodOutput, PathMethod
from .influence_pattern import influence_pattern_scores
from .jas import JASOptions, jas_path
from .knowledge import knowledge_attribution, top_neurons
from .paths import PathResult, check_units, find_paths, path_to_set
from .registry import (
    CONTROLS,
    DEFAULT_METHODS,
    REGISTRY,
    check_methods,
    method_options,
    method_title,
    register,
    selection_criteria,
)

__all__ = [
    "CONTROLS",
    "Control",
    "DEFAULT_METHODS",
    "JASOptions",
    "MethodOptions",
    "MethodOutput",
    "PathMethod",
    "PathResult",
    "REGISTRY",
    "activation_path",
    "check_methods",
    "check_units",
    "find_paths",
    "influence_pattern_scores",
    "jas_path",
    "knowledge_attribution",
    "method_options",
    "method_title",
    "path_to_set",
    "register",
    "selection_criteria",
    "top_neurons",
]
