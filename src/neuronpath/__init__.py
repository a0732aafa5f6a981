"""neuronpath: influential neuron paths in vision Transformers (Wang et al., ICLR 2025).

The public API, re-exported from the layers that define it (see ``docs/architecture.md``).
"""

from .engine.adapter import ModelAdapter
from .engine.attribution import (
    AttributionConfig,
    clean_pass,
    joint_attribution_score,
    joint_attribution_scores,
)
from .engine.layout import TokenLayout
from .engine.tokens import TokenPolicy
from .errors import InputError, NeuronpathError
from .experiments.classes import ClassesOptions, run_classes
from .experiments.common import Execution
from .experiments.evaluate import EditOptions, run_evaluate
from .experiments.faithfulness import FaithfulnessOptions
from .experiments.find import FindOptions, run_find
from .experiments.prune import PruneOptions, run_prune
from .experiments.run import Run
from .io.sources import DataSpec
from .io.store import read_manifest, read_records
from .methods import (
    CONTROLS,
    REGISTRY,
    JASOptions,
    MethodOptions,
    PathMethod,
    activation_path,
    find_paths,
    jas_path,
    register,
)
from .models.huggingface import from_hf_model
from .models.loading import load_model
from .models.spec import ModelSpec
from .version import __version__

__all__ = [
    "AttributionConfig",
    "CONTROLS",
    "ClassesOptions",
    "DataSpec",
    "EditOptions",
    "Execution",
    "FaithfulnessOptions",
    "FindOptions",
    "PruneOptions",
    "Run",
    "run_classes",
    "run_evaluate",
    "run_find",
    "run_prune",
    "InputError",
    "JASOptions",
    "MethodOptions",
    "ModelAdapter",
    "ModelSpec",
    "NeuronpathError",
    "PathMethod",
    "REGISTRY",
    "TokenLayout",
    "TokenPolicy",
    "__version__",
    "activation_path",
    "clean_pass",
    "find_paths",
    "from_hf_model",
    "jas_path",
    "joint_attribution_score",
    "joint_attribution_scores",
    "load_model",
    "read_manifest",
    "read_records",
    "register",
]
