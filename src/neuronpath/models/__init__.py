"""Models: load one by name (demo, Hugging Face folder or hub id, the paper's checkpoints, timm)
and wrap it in an engine adapter."""
