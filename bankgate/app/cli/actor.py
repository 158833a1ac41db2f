"""``--actor``: who runs a back-office command, for the audit trail (``bg_audit``).

Every ``bankgate`` command that changes the books, the invoices, the withholding
files or a reconciliation takes ``--actor NAME`` and records it with what it did.
Without it the actor is the login name of whoever runs the command (under
``sudo``, the user who called sudo), so nothing is ever recorded as a bare
"operator".  ``docs/operator-guide.rst`` ("The audit trail") is the manual.
"""

from __future__ import annotations

import argparse
import getpass
import os

MAX_LEN = 64  # bg_audit.actor


def default_actor() -> str:
    """The login name running this command: ``SUDO_USER`` under sudo (root is not
    a person), else :func:`getpass.getuser`; ``uid-N`` when the system knows no
    name (a container without a passwd entry)."""
    name = ""
    try:
        name = getpass.getuser()
    except (KeyError, OSError, ImportError):  # no name for this uid
        pass
    if name == "root" and os.environ.get("SUDO_USER", "").strip():
        name = os.environ["SUDO_USER"]
    name = name.strip()[:MAX_LEN]
    if not name:
        getuid = getattr(os, "getuid", None)
        name = f"uid-{getuid()}" if getuid else "unknown"
    return name


def actor_name(text: str) -> str:
    """An ``--actor`` value: not blank, at most 64 characters."""
    name = text.strip()
    if not name:
        raise argparse.ArgumentTypeError("must name who does this (it is empty)")
    if len(name) > MAX_LEN:
        raise argparse.ArgumentTypeError(f"at most {MAX_LEN} characters, got {len(name)}")
    return name


def add_actor(parser: argparse.ArgumentParser) -> None:
    """Add ``--actor`` (default: the login name) to a back-office command."""
    me = default_actor()
    parser.add_argument(
        "--actor", type=actor_name, default=me,
        help=("who does this, recorded in the audit trail (default: your login name,"
              f" {me.replace('%', '%%')})"))
