"""neuronpath: influential neuron paths in vision Transformers (Wang et al., ICLR 2025)."""

__version__ = "0.1.0"
