"""``python -m bridgic_coldmail`` runs the ``coldmail`` command."""

from .cli import entry_point

entry_point()
