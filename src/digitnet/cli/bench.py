"""CLI commands for bench (registered by `digitnet.cli._register`)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this concern's commands to the app."""
