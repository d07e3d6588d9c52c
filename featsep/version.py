"""The package version, importable from any layer (featsep/__init__.py is the top layer)."""

__version__ = "0.1.0"
