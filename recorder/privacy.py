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


#: Characters people and programs put inside a written phone number.
_SEPARATORS = str.maketrans("", "", " \t()-./")


def number_key(number: str | None) -> str:
    """The form two phone numbers are compared in: UK national digits (``0...``).

    Spaces, brackets, dots, dashes and slashes are dropped; ``+44`` and ``0044`` become
    the national ``0`` (``+44 (0)1632 960123`` included); any other ``+`` becomes the
    international ``00``. So ``"01632 960123"``, ``"+441632960123"`` and
    ``"0044 1632 960123"`` all give ``"01632960123"``. Anything that is not then all
    digits (empty, None, ``withheld``) gives ``""``, which matches nothing.
    """
    s = (number or "").translate(_SEPARATORS)
    if not any(c.isdigit() for c in s):
        return ""
    for intl in ("+44", "0044"):
        if s.startswith(intl):
            s = s[len(intl):]
            s = s if s.startswith("0") else "0" + s
            break
    else:
        if s.startswith("+"):
            s = "00" + s[1:]
    return s if s.isdigit() else ""


def number_matches(personal: dict, number: str) -> bool:
    """Is ``number`` (in any form :func:`number_key` accepts) the caller's number or the
    dialled number of a call whose personal fields are ``personal``? The one matching
    rule of the box's and the upstream's ``--number`` searches."""
    key = number_key(number)
    return bool(key) and key in (number_key(personal.get("caller_number")),
                                 number_key(personal.get("dialled_digits")))
