"""neuronpath: influential neuron paths in vision Transformers (Wang et al., ICLR 2025)."""

__version__ = "0.1.0"

from .adapters import ModelAdapter, from_hf_model  # noqa: E402
from .attribution import (AttributionConfig, clean_pass, joint_attribution_score,  # noqa: E402
                          joint_attribution_scores)
from .loading import load_model  # noqa: E402
from .search import activation_path, find_paths, jas_path  # noqa: E402
from .store import read_manifest, read_records  # noqa: E402
from .tokens import TokenPolicy  # noqa: E402

__all__ = ["AttributionConfig", "ModelAdapter", "TokenPolicy", "activation_path", "clean_pass",
           "find_paths", "from_hf_model", "jas_path", "joint_attribution_score",
           "joint_attribution_scores", "load_model", "read_manifest", "read_records"]
