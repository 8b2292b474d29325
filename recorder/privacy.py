"""Privacy helpers: the one way a phone number is shown anywhere outside a sealed manifest.

Logs, the audit log, ``linetap calls`` and the upstream's audit all show numbers through
:func:`mask_number`, so that one rule decides what a reader of any of them can learn.
"""

from __future__ import annotations

#: Caller-ID absence reasons: not numbers, shown as they are.
ABSENCE_REASONS = ("withheld", "unavailable")


def mask_number(number: str | None) -> str:
    """A phone number masked for display: at most the first 4 and last 2 digits.

    ``"01632960123"`` -> ``"0163*****23"``. A number of 6 digits or fewer (an extension,
    a short code) is all stars, since its first and last digits would be most of it.
    None or empty gives ``""``; the absence reasons (``withheld``, ``unavailable``) pass
    through; anything that is not a number (after removing spaces) gives ``"***"``.
    """
    if not number:
        return ""
    if number in ABSENCE_REASONS:
        return number
    digits = number.replace(" ", "")
    body = digits[1:] if digits.startswith("+") else digits
    if not body.isdigit():
        return "***"
    n = len(digits)
    if n <= 6:
        return "*" * n
    return digits[:4] + "*" * (n - 6) + digits[-2:]
