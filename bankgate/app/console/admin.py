"""Back-office pages (being written)."""

from __future__ import annotations


def mount(console, gw) -> None:
    """Mount this module's pages on ``console`` for the gateway ``gw``."""
