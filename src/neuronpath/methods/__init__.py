"""Path methods, one file each behind one interface (:mod:`.base`), listed in :mod:`.registry`."""

from .activation import activation_path
from .base import MethodOutput, PathMethod, PathOptions, TOPK_MODES
from .influence_pattern import influence_pattern_path, influence_pattern_scores
from .jas import jas_path
from .knowledge import knowledge_attribution, top_neurons
from .paths import PathResult, find_paths, path_to_set
from .registry import DEFAULT_METHODS, METHODS, REGISTRY, check_methods

__all__ = ["DEFAULT_METHODS", "METHODS", "REGISTRY", "TOPK_MODES", "MethodOutput", "PathMethod",
           "PathOptions", "PathResult", "activation_path", "check_methods", "find_paths",
           "influence_pattern_path", "influence_pattern_scores", "jas_path",
           "knowledge_attribution", "path_to_set", "top_neurons"]
