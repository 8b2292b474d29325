"""Signal synthesis: DTMF, caller ID (BT SIN 227 / ETSI V.23, Bell 202, ETSI DTMF CLIP).

The line simulator renders scenario events with these functions, and the decoders in this
package are tested against them, so everything here follows the standards' timings and
framing (documented in ``docs/dsp.md``). All outputs are float32 mono arrays in [-1, 1] at
``rate`` Hz (8000 or 16000). Levels are per tone in dBFS, where 0 dBFS is a full-scale sine.
Everything is vectorised numpy: the simulator renders hours of audio.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Sequence

import numpy as np

from hw.errors import DspInputError

#: Sample rates (Hz) the detectors are specified and tested for.
SUPPORTED_RATES = (8000, 16000)

#: dBFS of a 0 dBm0 sine (G.711: the digital milliwatt is 3.14 dB below full scale).
DBM0_TO_DBFS = -3.14


def check_rate(rate) -> int:
    """Return ``rate`` as int if it is one of :data:`SUPPORTED_RATES` (Hz), else raise."""
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise DspInputError(f"rate must be an int (8000 or 16000 Hz), got {rate!r}")
    if int(rate) not in SUPPORTED_RATES:
        raise DspInputError(f"rate must be 8000 or 16000 Hz, got {rate}")
    return int(rate)


def dbfs_to_amplitude(level_dbfs: float) -> float:
    """Peak amplitude (float full scale = 1.0) of a sine at ``level_dbfs`` dBFS."""
    return float(10.0 ** (level_dbfs / 20.0))



#: DTMF low (row) group frequencies in Hz (ITU-T Q.23).
LOW_GROUP = (697.0, 770.0, 852.0, 941.0)
#: DTMF high (column) group frequencies in Hz (ITU-T Q.23).
HIGH_GROUP = (1209.0, 1336.0, 1477.0, 1633.0)
#: Keypad layout: row i, column j -> symbol.
KEYPAD = ("123A", "456B", "789C", "*0#D")
#: symbol -> (low Hz, high Hz)
DTMF_FREQS = {KEYPAD[r][c]: (LOW_GROUP[r], HIGH_GROUP[c]) for r in range(4) for c in range(4)}

#: V.23 forward channel as used by BT SIN 227 / ETSI EN 300 659-1: (mark Hz, space Hz).
V23 = (1300.0, 2100.0)
#: Bell 202: (mark Hz, space Hz).
BELL202 = (1200.0, 2200.0)
#: FSK bit rate for both modems (bit/s).
BAUD = 1200.0
#: BT dual-tone alerting signal (DT-AS) frequencies in Hz.
DTAS_FREQS = (2130.0, 2750.0)

# BT SIN 227 idle-state timings (seconds) used by :func:`uk_clip`: silence after the polarity
# reversal (>= 100 ms), DT-AS length (88-110 ms), gap from DT-AS end to FSK (>= 45 ms) and gap
# from end of data to first ring (>= 200 ms). Bit counts: seizure 96-315, mark 55-150.
UK_PRE_S = 0.120
UK_DTAS_S = 0.100
UK_GAP_S = 0.060
UK_POST_S = 0.200
UK_SEIZURE_BITS = 96
UK_MARK_BITS = 55
# Trailing mark bits after the last byte: receivers (multimon-ng included) treat two stop
# bits in a row as end of message.
TRAILER_MARK_BITS = 8

# Bell 202 / Telcordia GR-30 on-hook framing: 300 seizure bits, 180 mark bits.
BELL_SEIZURE_BITS = 300
BELL_MARK_BITS = 180

#: MDMF parameter types (SIN 227 / EN 300 659-3).
PARAM_DATETIME = 0x01
PARAM_NUMBER = 0x02
PARAM_NUMBER_ABSENT = 0x04
PARAM_NAME = 0x07
PARAM_NAME_ABSENT = 0x08
MSG_MDMF = 0x80
MSG_SDMF = 0x04
#: absence reason -> code character on the wire
ABSENCE_CODES = {"withheld": "P", "unavailable": "O"}

MAX_NUMBER_LEN = 20
MAX_NAME_LEN = 20


def silence(duration_s: float, rate: int) -> np.ndarray:
    """``duration_s`` seconds of zeros (float32)."""
    return np.zeros(max(0, int(round(duration_s * rate))), dtype=np.float32)


def tone(freqs, duration_s: float, rate: int, level_dbfs=-10.0, phase: float = 0.0) -> np.ndarray:
    """Sum of sines, each at its own level.

    ``freqs``: Hz, a number or a sequence. ``level_dbfs``: per-tone level, a number or one per
    frequency. ``duration_s`` is rounded to whole samples. Returns float32.
    """
    rate = check_rate(rate)
    fs = np.atleast_1d(np.asarray(freqs, dtype=np.float64))
    levels = np.broadcast_to(np.asarray(level_dbfs, dtype=np.float64), fs.shape)
    n = max(0, int(round(duration_s * rate)))
    t = np.arange(n, dtype=np.float64) / rate
    out = np.zeros(n, dtype=np.float64)
    for f, lev in zip(fs, levels, strict=True):
        out += dbfs_to_amplitude(lev) * np.sin(2.0 * np.pi * f * t + phase)
    return out.astype(np.float32)


def dtmf(
    digits: str,
    rate: int,
    on_ms: float = 80,
    off_ms: float = 80,
    level_dbfs: float = -10.0,
    twist_db: float = 0.0,
    freq_offset: float = 0.0,
) -> np.ndarray:
    """DTMF digits as float32 audio.

    Each digit is ``on_ms`` of tone; digits are separated by ``off_ms`` of silence (no leading
    or trailing silence). ``level_dbfs`` is the low-group tone level; the high-group tone is at
    ``level_dbfs + twist_db``, so negative ``twist_db`` is *normal* twist (high group weaker)
    and positive is *reverse* twist. ``freq_offset`` is a fractional frequency error applied
    to both tones (0.015 = +1.5 %). Symbols: ``0-9 * # A-D``.
    """
    rate = check_rate(rate)
    digits = str(digits).upper()
    bad = [d for d in digits if d not in DTMF_FREQS]
    if bad:
        raise DspInputError(f"not DTMF symbols: {''.join(bad)!r}")
    n_on = int(round(on_ms * rate / 1000.0))
    n_off = int(round(off_ms * rate / 1000.0))
    if not digits:
        return np.zeros(0, dtype=np.float32)
    period = n_on + n_off
    total = period * len(digits) - n_off
    out = np.zeros(total, dtype=np.float32)
    t = np.arange(n_on, dtype=np.float64) / rate
    a_lo = dbfs_to_amplitude(level_dbfs)
    a_hi = dbfs_to_amplitude(level_dbfs + twist_db)
    cache: dict[str, np.ndarray] = {}
    for i, d in enumerate(digits):
        if d not in cache:
            f_lo, f_hi = DTMF_FREQS[d]
            k = 1.0 + freq_offset
            w = 2 * np.pi * k * t
            burst = a_lo * np.sin(f_lo * w) + a_hi * np.sin(f_hi * w)
            cache[d] = burst.astype(np.float32)
        out[i * period : i * period + n_on] = cache[d]
    return out


def uart_bits(data: bytes) -> np.ndarray:
    """Asynchronous framing: per byte a 0 start bit, 8 data bits LSB first, a 1 stop bit."""
    b = np.frombuffer(bytes(data), dtype=np.uint8)
    bits = np.zeros((b.size, 10), dtype=np.uint8)
    bits[:, 1:9] = (b[:, None] >> np.arange(8, dtype=np.uint8)) & 1
    bits[:, 9] = 1
    return bits.reshape(-1)


def fsk(
    bits: Iterable[int],
    rate: int,
    mark_hz: float,
    space_hz: float,
    level_dbfs: float = -12.0,
    baud: float = BAUD,
    freq_offset: float = 0.0,
    baud_offset: float = 0.0,
) -> np.ndarray:
    """Continuous-phase binary FSK: bit 1 = mark, bit 0 = space.

    ``freq_offset`` and ``baud_offset`` are fractional errors (0.01 = +1 %). Bits may fall on
    fractional sample positions; each sample takes the frequency of the bit it lies in.
    """
    rate = check_rate(rate)
    bits = np.asarray(list(bits) if not isinstance(bits, np.ndarray) else bits, dtype=np.uint8)
    if bits.size == 0:
        return np.zeros(0, dtype=np.float32)
    spb = rate / (baud * (1.0 + baud_offset))
    n = int(round(bits.size * spb))
    idx = np.minimum((np.arange(n) / spb).astype(np.int64), bits.size - 1)
    k = 1.0 + freq_offset
    freq = np.where(bits[idx] == 1, mark_hz * k, space_hz * k)
    phase = 2.0 * np.pi * np.cumsum(freq) / rate
    return (dbfs_to_amplitude(level_dbfs) * np.sin(phase)).astype(np.float32)


def _format_when(when) -> str | None:
    if when is None:
        return None
    if isinstance(when, _dt.datetime | _dt.date):
        return when.strftime("%m%d%H%M")
    s = str(when)
    if len(s) != 8 or not s.isdigit():
        raise DspInputError(f"when must be a datetime or 'MMDDHHMM', got {when!r}")
    return s


def _check_text(value: str | None, what: str, limit: int, digits_only: bool) -> str | None:
    if value is None:
        return None
    value = str(value)
    if not value:
        raise DspInputError(f"{what} is empty (use None and an absence reason)")
    if len(value) > limit:
        raise DspInputError(f"{what} is longer than {limit} characters")
    if digits_only and not all(c in "0123456789+*#" for c in value):
        raise DspInputError(f"{what} must contain digits only")
    if not all(32 <= ord(c) < 127 for c in value):
        raise DspInputError(f"{what} must be printable ASCII")
    return value


def _absence_code(reason: str | None, what: str) -> str | None:
    if reason is None:
        return None
    if reason not in ABSENCE_CODES:
        raise DspInputError(f"{what} must be 'withheld' or 'unavailable', got {reason!r}")
    return ABSENCE_CODES[reason]


def checksum(body: bytes) -> int:
    """Two's complement of the byte sum mod 256, so that the sum of all bytes is 0 mod 256."""
    return (-sum(body)) & 0xFF


def cli_message(
    number: str | None,
    name: str | None = None,
    when=None,
    absence: str | None = None,
    name_absence: str | None = None,
    fmt: str = "mdmf",
) -> bytes:
    """Build a caller ID message including its checksum byte.

    ``fmt="mdmf"``: type 0x80 with parameters 0x01 date/time, 0x02 number or 0x04 absence
    reason, 0x07 name or 0x08 name absence reason (in that order). ``fmt="sdmf"``: type 0x04,
    8 date/time characters then the number (or a single 'P'/'O' absence character); SDMF has
    no name. ``absence`` ('withheld'|'unavailable') applies when ``number`` is None, and
    defaults to 'unavailable' then.
    """
    number = _check_text(number, "number", MAX_NUMBER_LEN, digits_only=True)
    name = _check_text(name, "name", MAX_NAME_LEN, digits_only=False)
    stamp = _format_when(when)
    if number is None and absence is None:
        absence = "unavailable"
    code = _absence_code(absence, "absence") if number is None else None
    name_code = _absence_code(name_absence, "name_absence") if name is None else None
    if fmt == "mdmf":
        body = bytearray()
        if stamp is not None:
            body += bytes([PARAM_DATETIME, 8]) + stamp.encode("ascii")
        if number is not None:
            body += bytes([PARAM_NUMBER, len(number)]) + number.encode("ascii")
        else:
            body += bytes([PARAM_NUMBER_ABSENT, 1]) + code.encode("ascii")
        if name is not None:
            body += bytes([PARAM_NAME, len(name)]) + name.encode("ascii")
        elif name_code is not None:
            body += bytes([PARAM_NAME_ABSENT, 1]) + name_code.encode("ascii")
        msg = bytes([MSG_MDMF, len(body)]) + bytes(body)
    elif fmt == "sdmf":
        stamp = stamp or "01010000"
        payload = stamp + (number if number is not None else code)
        msg = bytes([MSG_SDMF, len(payload)]) + payload.encode("ascii")
    else:
        raise DspInputError(f"fmt must be 'mdmf' or 'sdmf', got {fmt!r}")
    return msg + bytes([checksum(msg)])


def fsk_burst(
    message: bytes,
    rate: int,
    modem: Sequence[float] = V23,
    seizure_bits: int = UK_SEIZURE_BITS,
    mark_bits: int = UK_MARK_BITS,
    level_dbfs: float = -12.0,
    freq_offset: float = 0.0,
    baud_offset: float = 0.0,
) -> np.ndarray:
    """Channel seizure (alternating 0/1, starting with 0), mark bits, framed message, trailer."""
    bits = np.concatenate(
        [
            np.arange(seizure_bits, dtype=np.uint8) % 2,
            np.ones(mark_bits, dtype=np.uint8),
            uart_bits(message),
            np.ones(TRAILER_MARK_BITS, dtype=np.uint8),
        ]
    )
    mark_hz, space_hz = modem
    return fsk(bits, rate, mark_hz, space_hz, level_dbfs, BAUD, freq_offset, baud_offset)


def uk_clip(
    number: str | None,
    name: str | None,
    when,
    rate: int,
    absence: str | None = None,
    level_dbfs: float = -12.0,
    *,
    name_absence: str | None = None,
    fmt: str = "mdmf",
    freq_offset: float = 0.0,
    message: bytes | None = None,
) -> np.ndarray:
    """BT SIN 227 idle-state caller display, as heard after the polarity reversal.

    Layout: 120 ms silence, 100 ms DT-AS (2130 + 2750 Hz, each at ``level_dbfs``), 60 ms
    silence, V.23 FSK (96 seizure bits, 55 mark bits, message, 8 trailing mark bits) at
    ``level_dbfs``, then 200 ms silence before the first ring may start. ``when`` is a
    datetime, an 'MMDDHHMM' string or None (no date/time parameter). ``message`` overrides
    the built message (tests use it to send corrupt frames).
    """
    rate = check_rate(rate)
    if message is None:
        message = cli_message(number, name, when, absence, name_absence, fmt)
    parts = [
        silence(UK_PRE_S, rate),
        tone(DTAS_FREQS, UK_DTAS_S, rate, level_dbfs),
        silence(UK_GAP_S, rate),
        fsk_burst(message, rate, V23, level_dbfs=level_dbfs, freq_offset=freq_offset),
        silence(UK_POST_S, rate),
    ]
    return np.concatenate(parts)


def bell202_clip(
    number: str | None,
    name: str | None,
    when,
    rate: int,
    absence: str | None = None,
    level_dbfs: float = -13.5,
    *,
    name_absence: str | None = None,
    fmt: str = "mdmf",
    freq_offset: float = 0.0,
) -> np.ndarray:
    """Bell 202 caller ID (mark 1200 Hz, space 2200 Hz) as some router phone ports send it.

    Layout: 100 ms silence, 300 seizure bits, 180 mark bits, message, 8 trailing mark bits,
    200 ms silence. Same message framing as :func:`uk_clip` (MDMF 0x80 or SDMF 0x04).
    """
    rate = check_rate(rate)
    message = cli_message(number, name, when, absence, name_absence, fmt)
    burst = fsk_burst(
        message, rate, BELL202, BELL_SEIZURE_BITS, BELL_MARK_BITS, level_dbfs, freq_offset
    )
    return np.concatenate([silence(0.100, rate), burst, silence(UK_POST_S, rate)])


def etsi_dtmf_clip(
    number: str | None,
    rate: int,
    absence: str | None = None,
    level_dbfs: float = -12.0,
    *,
    start: str = "A",
    on_ms: float = 70,
    off_ms: float = 70,
) -> np.ndarray:
    """DTMF caller ID in the ETSI style: ``A<digits>C`` (or ``D<digits>C`` with ``start="D"``).

    With ``number=None`` sends an absence code ``B00C`` (unavailable) or ``B10C`` (withheld).
    Layout: 100 ms silence, the digits (``on_ms``/``off_ms``), 200 ms silence.
    """
    rate = check_rate(rate)
    if start not in ("A", "D"):
        raise DspInputError("start must be 'A' or 'D'")
    if number is not None:
        number = _check_text(number, "number", MAX_NUMBER_LEN, digits_only=True)
        if not number.isdigit():
            raise DspInputError("a DTMF CLIP number must contain 0-9 only")
        symbols = start + number + "C"
    else:
        reason = absence or "unavailable"
        _absence_code(reason, "absence")
        symbols = "B" + ("10" if reason == "withheld" else "00") + "C"
    body = dtmf(symbols, rate, on_ms, off_ms, level_dbfs)
    return np.concatenate([silence(0.100, rate), body, silence(0.200, rate)])
