"""Logging to stdout for journald, and masking of phone numbers."""

from __future__ import annotations

import logging
import re
import sys

_FORMAT = "%(levelname)s %(name)s: %(message)s"
_DIGITS = re.compile(r"\+?\d[\d ]{6,}\d")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure the root logger once: INFO by default, DEBUG with -v, WARNING with -q."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    root = logging.getLogger()
    if not any(getattr(h, "_linetap", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter(_FORMAT))
        h._linetap = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)


def mask_number(number: str | None) -> str:
    """Mask a phone number for logs: keep the first 4 and last 2 digits (``0163*****23``).

    Short numbers (6 digits or fewer) keep only their last digit. None and the
    absence reasons (``withheld``, ``unavailable``) pass through unchanged.
    """
    if not number:
        return str(number)
    digits = [c for c in number if c.isdigit() or c == "+"]
    if len(digits) != len(number.replace(" ", "")):
        return number if number in ("withheld", "unavailable") else "***"
    n = len(digits)
    if n <= 6:
        return "*" * (n - 1) + digits[-1]
    return "".join(digits[:4]) + "*" * (n - 6) + "".join(digits[-2:])


def mask_digits_in(text: str) -> str:
    """Mask every run of 8 or more digits in free text (a last line of defence)."""
    return _DIGITS.sub(lambda m: mask_number(m.group(0).replace(" ", "")), text)
