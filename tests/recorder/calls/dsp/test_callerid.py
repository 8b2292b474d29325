"""Caller ID: round trips through gen -> decode, parser tables, noise/offset robustness."""

from __future__ import annotations

import datetime as dt
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw import linesignals as gen
from recorder.calls.dsp import callerid
from recorder.calls.dsp.common import DspInputError
from recorder.privacy import mask_number
from tests.recorder.calls.dsp.helpers import add_noise, pad, sine_power

RATES = (8000, 16000)
WHEN = dt.datetime(2026, 11, 25, 9, 5)


def _expect(result, **want):
    assert result is not None
    for key, value in want.items():
        assert result[key] == value, key


@pytest.mark.parametrize("rate", RATES)
def test_uk_mdmf_number_name_datetime(rate):
    x = gen.uk_clip("01632960123", "J SMITH", WHEN, rate)
    r = callerid.decode(x, rate)
    _expect(
        r,
        number="01632960123",
        name="J SMITH",
        datetime="11250905",
        absence_reason=None,
        message_type="mdmf",
        checksum_ok=True,
    )
    # first FSK bit: 120 ms silence + 100 ms DT-AS + 60 ms gap
    assert r["start_s"] == pytest.approx(0.280, abs=0.002)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("reason", ["withheld", "unavailable"])
def test_uk_mdmf_absence(rate, reason):
    x = gen.uk_clip(None, None, WHEN, rate, absence=reason, name_absence=reason)
    r = callerid.decode(x, rate)
    _expect(r, number=None, name=None, absence_reason=reason, name_absence_reason=reason)


@pytest.mark.parametrize("rate", RATES)
def test_uk_mdmf_without_datetime_and_int16(rate):
    x = gen.uk_clip("02079460000", None, None, rate)
    r = callerid.decode(np.round(x * 32767).astype(np.int16), rate)
    _expect(r, number="02079460000", name=None, datetime=None)


@pytest.mark.parametrize("rate", RATES)
def test_bad_checksum_returns_none(rate):
    msg = bytearray(gen.cli_message("01632960123", "J SMITH", WHEN))
    msg[-1] ^= 0x01
    assert callerid.decode(gen.uk_clip(None, None, None, rate, message=bytes(msg)), rate) is None
    msg = bytearray(gen.cli_message("01632960123", "J SMITH", WHEN))
    msg[5] ^= 0x10  # a corrupted payload byte with the old checksum
    assert callerid.decode(gen.uk_clip(None, None, None, rate, message=bytes(msg)), rate) is None


@pytest.mark.parametrize("rate", RATES)
def test_sdmf(rate):
    r = callerid.decode(gen.uk_clip("01632960123", None, WHEN, rate, fmt="sdmf"), rate)
    _expect(r, number="01632960123", datetime="11250905", message_type="sdmf")
    r = callerid.decode(gen.uk_clip(None, None, WHEN, rate, "withheld", fmt="sdmf"), rate)
    _expect(r, number=None, absence_reason="withheld", message_type="sdmf")


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("fmt", ["mdmf", "sdmf"])
def test_bell202(rate, fmt):
    name = "JOE BLOGGS" if fmt == "mdmf" else None
    x = gen.bell202_clip("5551234567", name, WHEN, rate, fmt=fmt)
    _expect(
        callerid.decode(x, rate, "bell202"),
        number="5551234567",
        name=name,
        datetime="11250905",
        message_type=fmt,
    )
    # A V.23 receiver must not invent a message from Bell 202 tones; whether it decodes the
    # (overlapping) tones correctly or not at all does not matter, a wrong number would.
    r = callerid.decode(x, rate, "uk")
    assert r is None or r["number"] == "5551234567"


@pytest.mark.parametrize("rate", RATES)
def test_etsi_dtmf_number(rate):
    _expect(
        callerid.decode(gen.etsi_dtmf_clip("0123456789", rate), rate, "etsi_dtmf"),
        number="0123456789",
        absence_reason=None,
        message_type="dtmf",
    )
    _expect(
        callerid.decode(gen.etsi_dtmf_clip("4512345678", rate, start="D"), rate, "etsi_dtmf"),
        number="4512345678",
    )


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("reason", ["withheld", "unavailable"])
def test_etsi_dtmf_absence(rate, reason):
    x = gen.etsi_dtmf_clip(None, rate, absence=reason)
    _expect(callerid.decode(x, rate, "etsi_dtmf"), number=None, absence_reason=reason)


@pytest.mark.parametrize(
    ("symbols", "number", "reason"),
    [
        ("A01632960123C", "01632960123", None),
        ("D4512345678C", "4512345678", None),
        ("A0123#", "0123", None),
        ("B00C", None, "unavailable"),
        ("B10C", None, "withheld"),
        ("D1C", None, "withheld"),
        ("D2C", None, "unavailable"),
        ("D3#", None, "unavailable"),
    ],
)
def test_parse_dtmf_clip_table(symbols, number, reason):
    r = callerid.parse_dtmf_clip(symbols)
    assert (r["number"], r["absence_reason"]) == (number, reason)


@pytest.mark.parametrize(
    "symbols", ["", "A", "AC", "A123", "123C", "B01C", "D9C", "C123A", "A12B34C", "A12*C"]
)
def test_parse_dtmf_clip_rejects(symbols):
    assert callerid.parse_dtmf_clip(symbols) is None


def _msg(body: bytes, mtype=0x80) -> bytes:
    m = bytes([mtype, len(body)]) + body
    return m + bytes([gen.checksum(m)])


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (_msg(b"\x02\x0b01632960123"), {"number": "01632960123", "message_type": "mdmf"}),
        (
            _msg(b"\x01\x0811250905\x04\x01P"),
            {"datetime": "11250905", "absence_reason": "withheld"},
        ),
        (
            _msg(b"\x04\x01O\x08\x01P"),
            {"absence_reason": "unavailable", "name_absence_reason": "withheld"},
        ),
        (_msg(b"\x07\x07J SMITH\x11\x01\x00\x02\x03123"), {"name": "J SMITH", "number": "123"}),
        (
            _msg(b"11250905" + b"01632960123", 0x04),
            {"number": "01632960123", "message_type": "sdmf"},
        ),
        (_msg(b"11250905O", 0x04), {"absence_reason": "unavailable", "number": None}),
    ],
)
def test_parse_message_table(data, want):
    r = callerid.parse_message(data)
    _expect(r, **want)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        _msg(b"\x02\x0b01632960123")[:-1] + b"\x00",  # bad checksum
        _msg(b"\x02\x0c01632960123"),  # parameter runs past the body
        _msg(b"\x02\x03ABC"),  # number must be digits
        _msg(b"\x01\x041125"),  # short date/time
        _msg(b"\x02\x011", 0x82),  # message waiting, not call setup
        _msg(b"1125", 0x04),  # SDMF too short
        _msg(b"\x02\x031\x002"),  # control character in number
        _msg(b""),  # empty call setup
        _msg(b"\x07\x03BOB\x01\x0811250905"),  # no number and no reason for its absence
    ],
)
def test_parse_message_rejects(data):
    assert callerid.parse_message(data) is None


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("level", [-42.0, -36.0, -6.0, -3.0])
@pytest.mark.parametrize("offset", [-0.01, 0.01])
def test_level_and_frequency_offset(rate, level, offset):
    x = gen.uk_clip("01632960123", "J SMITH", WHEN, rate, level_dbfs=level, freq_offset=offset)
    _expect(callerid.decode(x, rate), number="01632960123", name="J SMITH")


@pytest.mark.parametrize("rate", RATES)
def test_bit_rate_error(rate):
    msg = gen.cli_message("01632960123", "J SMITH", WHEN)
    for baud_offset in (-0.01, 0.01):
        x = pad(gen.fsk_burst(msg, rate, gen.V23, baud_offset=baud_offset), rate)
        _expect(callerid.decode(x, rate), number="01632960123")


@pytest.mark.parametrize("rate", RATES)
def test_message_deep_in_a_long_recording(rate):
    # Crosses the 8 s decode block boundary (blocks overlap by 2 s).
    rng = np.random.default_rng(5)
    clip = gen.uk_clip("01632960123", "J SMITH", WHEN, rate)
    x = np.concatenate(
        [
            rng.normal(0, 0.01, int(6.9 * rate)).astype(np.float32),
            clip,
            np.zeros(rate * 12, np.float32),
        ]
    )
    r = callerid.decode(x, rate)
    _expect(r, number="01632960123")
    assert r["start_s"] == pytest.approx(6.9 + 0.280, abs=0.003)


@pytest.mark.parametrize("rate", RATES)
def test_message_without_preceding_mark_is_ignored(rate):
    # Seizure straight into the message, no mark bits: not a CLIP burst.
    msg = gen.cli_message("01632960123", "J SMITH", WHEN)
    x = pad(gen.fsk_burst(msg, rate, gen.V23, mark_bits=0), rate)
    assert callerid.decode(x, rate) is None
    x = pad(gen.fsk_burst(msg, rate, gen.V23, mark_bits=30), rate)
    _expect(callerid.decode(x, rate), number="01632960123")


@pytest.mark.parametrize("rate", RATES)
def test_nothing_to_decode(rate):
    rng = np.random.default_rng(2)
    assert callerid.decode(np.zeros(rate, np.float32), rate) is None
    assert callerid.decode(rng.normal(0, 0.1, rate * 10).astype(np.float32), rate) is None
    assert callerid.decode(gen.dtmf("123", rate), rate, "etsi_dtmf") is None
    assert callerid.decode(gen.tone((350, 450), 3.0, rate, -10), rate) is None


def _random_frame(rng):
    number = "0" + "".join(rng.choice(list("0123456789"), int(rng.integers(9, 15))))
    absence = None
    if rng.random() < 0.15:
        number, absence = None, str(rng.choice(["withheld", "unavailable"]))
    name = None
    if rng.random() < 0.7:
        letters = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ .'-&0123456789")
        name = "".join(rng.choice(letters, int(rng.integers(1, 21)))).strip() or "X"
    when = (
        None
        if rng.random() < 0.1
        else dt.datetime(
            2026,
            int(rng.integers(1, 13)),
            int(rng.integers(1, 29)),
            int(rng.integers(0, 24)),
            int(rng.integers(0, 60)),
        )
    )
    return number, name, when, absence


@pytest.mark.slow   # about 8 s
def test_random_frames_20db_snr_1pct_offset():
    """>= 99 % of random frames at 20 dB S/N and +-1 % frequency offset (V.23, 8 kHz)."""
    n_frames = int(os.environ.get("LINETAP_CLI_FRAMES", "1000"))
    rng = np.random.default_rng(20261125)
    ok = 0
    for i in range(n_frames):
        number, name, when, absence = _random_frame(rng)
        level = float(rng.uniform(-36.0, -6.0))
        offset = float(rng.choice([-0.01, 0.01]))
        x = gen.uk_clip(number, name, when, 8000, absence, level_dbfs=level, freq_offset=offset)
        x = add_noise(x, 20.0, sine_power(level), seed=i)
        r = callerid.decode(x, 8000)
        want_when = None if when is None else when.strftime("%m%d%H%M")
        if (
            r is not None
            and r["number"] == number
            and r["name"] == name
            and r["datetime"] == want_when
            and r["absence_reason"] == absence
        ):
            ok += 1
    assert ok >= 0.99 * n_frames, f"{ok}/{n_frames}"


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(0, np.float32),
        np.array([np.nan] * 100),
        np.zeros(100, np.uint8),
        np.zeros((100, 2), np.int16),
        "abc",
    ],
)
def test_hostile_samples(bad):
    with pytest.raises(DspInputError):
        callerid.decode(bad, 8000)


def test_hostile_rate_and_standard():
    with pytest.raises(DspInputError):
        callerid.decode(np.zeros(100, np.float32), 11025)
    with pytest.raises(ValueError):
        callerid.decode(np.zeros(100, np.float32), 8000, standard="us")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"number": "0163296012345678901234"},
        {"number": "0163x"},
        {"name": "É"},
        {"name": "A" * 21},
        {"when": "2026-11-25"},
        {"absence": "busy", "number": None},
    ],
)
def test_generator_rejects_bad_fields(kwargs):
    args = {"number": "01632960123", "name": None, "when": None}
    args.update(kwargs)
    with pytest.raises(DspInputError):
        gen.uk_clip(rate=8000, **args)


@pytest.mark.parametrize(
    ("number", "masked"),
    [("01632960123", "0163*****23"), ("1234567", "1234*67"), ("123", "***"), (None, ""),
     ("", ""), ("123456", "******"), ("+441632960123", "+441*******23"),
     ("01632 960123", "0163*****23"), ("withheld", "withheld"), ("unavailable", "unavailable"),
     ("J SMITH", "***"), ("0163-960123", "***")],
)
def test_mask_number(number, masked):
    """One rule everywhere: never more than the first 4 and last 2 digits."""
    assert mask_number(number) == masked


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.binary(max_size=80))
def test_parse_message_never_crashes(data):
    r = callerid.parse_message(data)
    assert r is None or (r["number"] is not None or r["absence_reason"] is not None)


@settings(max_examples=200, deadline=None, database=None)
@given(symbols=st.text(alphabet="0123456789*#ABCD", max_size=24))
def test_parse_dtmf_clip_never_crashes(symbols):
    r = callerid.parse_dtmf_clip(symbols)
    assert r is None or (r["number"] is not None) != (r["absence_reason"] is not None)
