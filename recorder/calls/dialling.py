"""Which DTMF digits of an outbound call are the dialled number (pure decisions).

Only the dialled number is kept (``dialled_digits``). Digits keyed afterwards (card
numbers and security codes for an IVR, menu choices) are never stored in any form;
only their masked time spans are. The number ends at the first of:

* a gap of at least :data:`DIAL_GAP_S` between one digit's end and the next digit's
  start;
* :data:`DIAL_MAX_S` after off-hook;
* the longest number the digits so far can begin (:func:`max_length`): a UK national
  number (``0`` + 10 digits), an international one (``00`` + up to 15 digits, E.164's
  longest), a UK short code (``1xx`` ... up to 6 digits: 118 xxx), or a local number
  without its area code (up to 8 digits), each after an optional ``141`` (withhold) or
  ``1470`` (release) prefix.

So a payment line dialled as 11 digits and followed 1.5 s later by 16 card digits keeps
the 11 digits; the first card digit would be the 12th, which no UK national number has.
A number shorter than its plan's longest, followed by more digits within 2 s, keeps up
to that longest (``01xxx`` numbers of 10 digits are the UK case). Answer and ringback
are not detected (the DSP has no ringback detector yet), so they do not end the number.
"""

from __future__ import annotations

from dataclasses import dataclass

DIAL_GAP_S = 2.0        # the number ends at a pause this long (seconds)
DIAL_MAX_S = 30.0       # ... or this long after off-hook
PREFIXES = ("1470", "141")   # UK: release / withhold the caller's number for this call
INTERNATIONAL_MAX = 17  # "00" + 15 digits (ITU-T E.164 maximum)
NATIONAL_MAX = 11       # "0" + 10 digits (UK national significant numbers)
SHORT_MAX = 6           # 1xx short codes; 118 xxx directory enquiries
LOCAL_MAX = 8           # a local number without its area code (020 numbers: 8)
SERVICE_MAX = 20        # "*" / "#" network service codes (e.g. *43#), with a number


def max_length(digits: str) -> int | None:
    """The longest a number beginning with ``digits`` can be (prefix included), or None
    when ``digits`` do not yet show which plan it follows (the empty string, or a bare
    prefix such as ``141``)."""
    prefix = next((p for p in PREFIXES if digits.startswith(p)), "")
    rest = digits[len(prefix):]
    if not rest or rest == "0":
        return None
    if rest.startswith("00"):
        return len(prefix) + INTERNATIONAL_MAX
    if rest.startswith("0"):
        return len(prefix) + NATIONAL_MAX
    if rest[0] in "*#":
        return len(prefix) + SERVICE_MAX
    if rest[0] == "1":
        return len(prefix) + SHORT_MAX
    return len(prefix) + LOCAL_MAX


@dataclass(frozen=True)
class Dialling:
    """The dialled number collected so far on one outbound call.

    ``digits``: the number; ``last_end``: end sample of its last digit (None before the
    first); ``open``: False once the number has ended (no digit is added after that).
    """
    digits: str = ""
    last_end: int | None = None
    open: bool = True


def dial_step(state: Dialling, digit: str, start: int, end: int, offhook: int,
              rate: int) -> Dialling:
    """The state after a digit (``start``/``end``: samples on the line's clock;
    ``offhook``: the call's off-hook sample; ``rate``: Hz). Pure."""
    if not state.open:
        return state
    if start - offhook >= DIAL_MAX_S * rate:
        return Dialling(state.digits, state.last_end, False)
    if state.last_end is not None and start - state.last_end >= DIAL_GAP_S * rate:
        return Dialling(state.digits, state.last_end, False)
    cap = max_length(state.digits)
    if cap is not None and len(state.digits) >= cap:
        return Dialling(state.digits, state.last_end, False)
    return Dialling(state.digits + digit, end, True)
