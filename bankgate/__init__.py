"""bankgate: a real-time bank collection gateway for utility billing."""

__version__ = "0.1.0"
