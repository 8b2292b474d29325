"""Caller ID (CLI) decoding: BT SIN 227 / ETSI V.23 FSK, Bell 202 FSK, ETSI DTMF CLIP.

:func:`decode` finds the first valid caller ID message in a recording. Message parsing is done
by pure functions (:func:`parse_message`, :func:`parse_dtmf_clip`) that are table-tested on
bytes and strings. Phone numbers never appear in logs unmasked.
"""

from __future__ import annotations

import logging
import re

import numpy as np

from hw.linesignals import (
    BELL202,
    MSG_MDMF,
    MSG_SDMF,
    PARAM_DATETIME,
    PARAM_NAME,
    PARAM_NAME_ABSENT,
    PARAM_NUMBER,
    PARAM_NUMBER_ABSENT,
    V23,
)
from recorder.calls.dsp import dtmf, fsk
from recorder.calls.dsp.common import DspInputError, check_rate, to_float
from recorder.privacy import mask_number

logger = logging.getLogger(__name__)

STANDARDS = ("uk", "bell202", "etsi_dtmf")
_MODEMS = {"uk": V23, "bell202": BELL202}
#: wire code -> absence reason
ABSENCE_REASONS = {"P": "withheld", "O": "unavailable"}

_BLOCK_S = 8.0  # decode long recordings in blocks to bound memory...
_OVERLAP_S = 2.0  # ...overlapping by more than the longest message (about 1 s)
_MIN_MARK_BITS = 20  # a message starts after steady mark (SIN 227: 55-150 bits, Bell: 180)
_MAX_BYTE_GAP_BITS = 20  # bytes of one message follow each other within this (start to start)
_DTMF_CLIP_GAP_S = 0.5  # DTMF CLIP symbols further apart than this belong to different bursts


def _ascii(raw: bytes, digits_only: bool) -> str | None:
    """Printable ASCII text, or None if any byte is not allowed."""
    if not raw or any(b < 0x20 or b > 0x7E for b in raw):
        return None
    text = raw.decode("ascii")
    if digits_only and not re.fullmatch(r"[0-9+*#]+", text):
        return None
    return text


def parse_message(data: bytes) -> dict | None:
    """Parse one complete message ``type, length, body..., checksum``.

    Returns the decode() dict (keys ``number``, ``name``, ``datetime``, ``absence_reason``,
    ``message_type``, ``checksum_ok`` and ``name_absence_reason`` when signalled), or None when
    the checksum is wrong, the type is not a call setup (MDMF 0x80 / SDMF 0x04), the body
    does not parse exactly, or it carries neither a number nor a reason for its absence.
    """
    if len(data) < 3 or len(data) != data[1] + 3:
        return None
    if sum(data) & 0xFF:
        return None
    body = data[2:-1]
    result = {
        "number": None,
        "name": None,
        "datetime": None,
        "absence_reason": None,
        "checksum_ok": True,
    }
    if data[0] == MSG_SDMF:
        if len(body) < 9:
            return None
        stamp = _ascii(body[:8], digits_only=True)
        rest = body[8:].decode("ascii", errors="replace")
        if stamp is None or not stamp.isdigit():
            return None
        result["datetime"] = stamp
        if rest in ABSENCE_REASONS:
            result["absence_reason"] = ABSENCE_REASONS[rest]
        else:
            result["number"] = _ascii(body[8:], digits_only=True)
            if result["number"] is None:
                return None
        result["message_type"] = "sdmf"
        return result
    if data[0] != MSG_MDMF:
        return None
    i = 0
    while i < len(body):
        if i + 2 > len(body) or i + 2 + body[i + 1] > len(body):
            return None
        ptype, plen = body[i], body[i + 1]
        value = body[i + 2 : i + 2 + plen]
        i += 2 + plen
        if ptype == PARAM_DATETIME:
            stamp = _ascii(value, digits_only=True)
            if stamp is None or len(stamp) != 8 or not stamp.isdigit():
                return None
            result["datetime"] = stamp
        elif ptype == PARAM_NUMBER:
            result["number"] = _ascii(value, digits_only=True)
            if result["number"] is None:
                return None
        elif ptype == PARAM_NUMBER_ABSENT:
            result["absence_reason"] = ABSENCE_REASONS.get(value[:1].decode("latin-1"))
        elif ptype == PARAM_NAME:
            result["name"] = _ascii(value, digits_only=False)
            if result["name"] is None:
                return None
        elif ptype == PARAM_NAME_ABSENT:
            result["name_absence_reason"] = ABSENCE_REASONS.get(value[:1].decode("latin-1"))
        # Other parameters (called number, call type, ...) are skipped by their length.
    if result["number"] is None and result["absence_reason"] is None:
        return None  # the calling line identity (or why it is absent) is mandatory
    result["message_type"] = "mdmf"
    return result


def find_message(received: list[fsk.Byte], rate: int) -> tuple[dict | None, float, int]:
    """First valid message in a byte stream.

    Returns ``(parsed, start_sample, bad_checksums)``; ``parsed`` is None if there is no valid
    message, and ``bad_checksums`` counts well-framed call-setup messages whose checksum failed.
    """
    max_gap = _MAX_BYTE_GAP_BITS * rate / fsk.BAUD
    values = [b.value for b in received]
    bad = 0
    for i, b in enumerate(received):
        if b.value not in (MSG_MDMF, MSG_SDMF) or i + 1 >= len(received):
            continue
        if b.mark_bits < _MIN_MARK_BITS:
            continue
        end = i + received[i + 1].value + 3
        if end > len(received):
            continue
        if any(received[j + 1].start - received[j].start > max_gap for j in range(i, end - 1)):
            continue
        raw = bytes(values[i:end])
        parsed = parse_message(raw)
        if parsed is not None:
            return parsed, b.start, bad
        bad += bool(sum(raw) & 0xFF)
    return None, 0.0, bad


def parse_dtmf_clip(symbols: str) -> dict | None:
    """Parse one DTMF caller ID burst (ETSI EN 300 659-1 DTMF variant and national forms).

    Accepted: ``A<digits>C`` and ``D<digits>C`` (2+ digits) -> number; ``B00C`` ->
    unavailable; ``B10C`` -> withheld; ``D1C`` -> withheld; ``D2C``/``D3C`` -> unavailable.
    ``#`` is accepted in place of the closing ``C``. Anything else -> None.
    """
    m = re.fullmatch(r"([ABD])([0-9]+)[C#]", symbols)
    if m is None:
        return None
    start, digits = m.groups()
    result = {"number": None, "name": None, "datetime": None, "absence_reason": None}
    if start == "B":
        reason = {"00": "unavailable", "10": "withheld"}.get(digits)
        if reason is None:
            return None
        result["absence_reason"] = reason
    elif start == "D" and len(digits) == 1:
        reason = {"1": "withheld", "2": "unavailable", "3": "unavailable"}.get(digits)
        if reason is None:
            return None
        result["absence_reason"] = reason
    else:
        result["number"] = digits
    result["message_type"] = "dtmf"
    return result


def _decode_fsk(x: np.ndarray, rate: int, modem) -> dict | None:
    block, overlap = int(_BLOCK_S * rate), int(_OVERLAP_S * rate)
    step = block - overlap
    bad = 0
    for offset in range(0, max(1, x.size - overlap), step):
        chunk = x[offset : offset + block]
        soft, power = fsk.demodulate(chunk, rate, *modem)
        parsed, first, n_bad = find_message(fsk.read_bytes(soft, power, rate), rate)
        bad += n_bad
        if parsed is None:
            continue
        begin = fsk.burst_start(power, int(first), rate)
        parsed["start_s"] = (offset + begin) / rate
        return parsed
    if bad:
        logger.debug("no valid CLI message; %d framed message(s) failed the checksum", bad)
    return None


def _decode_dtmf(x: np.ndarray, rate: int) -> dict | None:
    found = dtmf.detect(x, rate)
    bursts: list[list[tuple[str, float, float]]] = []
    for d in found:
        if bursts and d[1] - bursts[-1][-1][2] <= _DTMF_CLIP_GAP_S:
            bursts[-1].append(d)
        else:
            bursts.append([d])
    for burst in bursts:
        symbols = "".join(d for d, _, _ in burst)
        # A burst may carry stray digits before the start symbol; try each start.
        for i, sym in enumerate(symbols):
            if sym in "ABD":
                parsed = parse_dtmf_clip(symbols[i:])
                if parsed is not None:
                    parsed["start_s"] = burst[i][1]
                    return parsed
    return None


def decode(samples, rate: int, standard: str = "uk") -> dict | None:
    """Decode the first caller ID message in ``samples``.

    ``samples``: mono int16 or float in [-1, 1]; ``rate``: 8000 or 16000 Hz; ``standard``:
    ``"uk"`` (BT SIN 227 / ETSI V.23 FSK), ``"bell202"`` or ``"etsi_dtmf"``.

    Returns None when no valid message is present (a bad checksum counts as not present),
    else a dict with ``number`` (digits or None), ``name`` (or None), ``datetime``
    ('MMDDHHMM' as sent, or None), ``absence_reason`` (None, 'withheld' or 'unavailable',
    about the number), ``message_type`` ('mdmf', 'sdmf' or 'dtmf'), ``start_s`` (seconds to
    the first FSK bit or first DTMF symbol), ``checksum_ok`` for FSK, and
    ``name_absence_reason`` when the message signals one.
    """
    rate = check_rate(rate)
    if standard not in STANDARDS:
        raise DspInputError(f"standard must be one of {STANDARDS}, got {standard!r}")
    x = to_float(samples)
    if standard == "etsi_dtmf":
        result = _decode_dtmf(x, rate)
    else:
        result = _decode_fsk(x, rate, _MODEMS[standard])
    if result is not None:
        logger.debug(
            "caller ID (%s): number %s absence %s at %.3f s",
            standard,
            mask_number(result["number"]),
            result["absence_reason"],
            result["start_s"],
        )
    return result
