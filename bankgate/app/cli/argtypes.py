"""Argument types shared by the command-line tools."""

from __future__ import annotations

import argparse
from datetime import date, datetime


def date_arg(text: str) -> date:
    """A date typed as YYYY-MM-DD or YYYYMMDD (argparse ``type=``)."""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD or YYYYMMDD, got {text!r}")
