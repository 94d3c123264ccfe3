"""The reviewer's inbox: ``coldmail serve`` (needs ``pip install 'bridgic-coldmail[web]'``)."""

from .app import create_app

__all__ = ["create_app"]
