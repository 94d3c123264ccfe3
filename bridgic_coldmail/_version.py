"""The release number, in a module of its own so that any layer can read it without
importing the package's public surface (which imports every layer)."""

__version__ = "0.5.0"
