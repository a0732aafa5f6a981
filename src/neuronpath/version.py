"""The package version (one place; the manifest and ``pyproject.toml`` read it)."""

__version__ = "0.1.0"
