"""Wording helpers for command output."""

from __future__ import annotations


def plural(count: int, noun: str, plural_noun: str = "") -> str:
    """Return "1 host", "0 hosts", "2 hosts"; plural_noun replaces the default noun + "s"."""
    return f"{count} {noun if count == 1 else (plural_noun or noun + 's')}"
