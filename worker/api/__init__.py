"""The read-only HTTP API and the operator page (`newsworker api`); see docs/api.md."""

from .app import create_app

__all__ = ["create_app"]
