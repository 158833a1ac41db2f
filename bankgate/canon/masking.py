"""Masking of card and account numbers for logs, screens, files and the audit.

One rule for the whole gateway (and for ``pan_masked`` in the ref-iso8583
statement, ``docs/specs/ref-iso8583.rst`` §6): a number of 13 digits or more
(every payment card) keeps its first 6 and last 4 digits; a shorter one keeps
only its last 4, so that masking a short account number still hides most of
it; 4 characters or fewer are masked entirely.
"""

from __future__ import annotations


def mask_pan(pan: str | None) -> str:
    """A card number for logs: first 6 and last 4 digits, the rest ``*``."""
    if not pan:
        return ""
    n = len(pan)
    if n >= 13:
        return pan[:6] + "*" * (n - 10) + pan[-4:]
    if n > 4:
        return "*" * (n - 4) + pan[-4:]
    return "*" * n


def mask_account(account: str | None) -> str:
    """An account number for screens, logs and the audit: never in full."""
    return mask_pan((account or "").strip())
