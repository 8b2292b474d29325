"""A payment line: the dialled number is kept, card digits keyed after it are never
stored in any form, and every card digit is masked even while someone talks over it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recorder.calls.dialling import Dialling, dial_step, max_length
from recorder.calls.dsp import dtmf
from recorder.privacy import mask_number
from tests.support import corpus
from tests.support.sim import write_wav

RATE = 8000
NUMBER = "01632960123"
CARD = "4929123456781234"
CVV = "737"
ON, OFF = 0.09, 0.09            # s per digit and per pause
DIAL_AT = 2.0
CARD_AT = DIAL_AT + len(NUMBER) * (ON + OFF) - OFF + 1.5     # 1.5 s after the dialling
CVV_AT = CARD_AT + len(CARD) * (ON + OFF) - OFF + 1.0


def _scenario(speech_wav=None):
    ev = [{"at": 1.0, "line": 0, "type": "offhook"},
          {"at": DIAL_AT, "line": 0, "type": "dtmf", "digits": NUMBER, "on_ms": ON * 1000,
           "off_ms": OFF * 1000, "level_dbfs": -16.0},
          {"at": CARD_AT, "line": 0, "type": "dtmf", "digits": CARD, "on_ms": ON * 1000,
           "off_ms": OFF * 1000, "level_dbfs": -23.0},
          {"at": CVV_AT, "line": 0, "type": "dtmf", "digits": CVV, "on_ms": ON * 1000,
           "off_ms": OFF * 1000, "level_dbfs": -23.0},
          {"at": 14.0, "line": 0, "type": "onhook"}]
    if speech_wav is not None:
        ev.append({"at": CARD_AT - 0.5, "line": 0, "type": "audio", "file": str(speech_wav)})
    return ev


def _speech(tmp_path) -> Path:
    """Speech at -30 dBFS RMS: the card digits (two tones at -23 dBFS each, -20 dBFS
    together) are 10 dB above it."""
    x = corpus.build(1, RATE, tmp_path / "corpus", seed=3)[: int(6.5 * RATE)]
    x = x * (10 ** (-30 / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    return write_wav(tmp_path / "speech.wav", x)


def _every_file_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


@pytest.mark.parametrize("talk", [False, True])
def test_card_digits_never_stored_and_all_masked(sim, tmp_path, talk):
    if talk and corpus.tools_available():
        pytest.skip(f"speech needs {corpus.tools_available()} (apt-get install espeak-ng sox)")
    sim.run(_scenario(_speech(tmp_path) if talk else None), duration=15)
    calls, failures = sim.export()
    assert failures == 0
    [(meta, pcm)] = list(calls.values())
    assert meta["direction"] == "outbound"
    assert meta["dialled_digits"] == NUMBER
    [row] = sim.store().calls()
    assert row.party_masked == mask_number(NUMBER)          # the box keeps it masked only
    # No card digit sequence in the exported metadata, nor in any byte the box stored.
    text = json.dumps(meta)
    for secret in (CARD, CARD[:6], CARD[-4:], NUMBER + CARD[:1]):
        assert secret not in text
    blob = _every_file_bytes(sim.data)
    for secret in (CARD, CARD[:8], NUMBER + CARD[:1]):
        assert secret.encode() not in blob
    # Every card and security digit is silenced, from its first sample to its last.
    first = int(0.5 * RATE)            # recording starts 0.5 s before off-hook (pre-roll)
    for at, digits in ((CARD_AT, CARD), (CVV_AT, CVV)):
        for i in range(len(digits)):
            a = int(round((at + i * (ON + OFF)) * RATE)) - first
            tone = pcm[a:a + int(ON * RATE)]
            assert len(tone) == int(ON * RATE) and not tone.any(), (digits, i)
    assert dtmf.detect(pcm, RATE) == []


@pytest.mark.parametrize("digits, cap", [
    ("", None), ("0", None), ("01", 11), ("00", 17), ("0044", 17), ("141", None),
    ("1410", None), ("14101", 14), ("1470", None), ("147000", 21), ("999", 8),
    ("118", 6), ("12", 6), ("*4", 20), ("#3", 20), ("7", 8), ("2079", 8)])
def test_max_length(digits, cap):
    assert max_length(digits) == cap


S = RATE   # one second in samples


def _dial(events, offhook=0):
    st = Dialling()
    for d, t0, t1 in events:
        st = dial_step(st, d, int(t0 * S), int(t1 * S), offhook, RATE)
    return st


@pytest.mark.parametrize("events, digits, still_open", [
    ([("0", 1, 1.1), ("1", 1.2, 1.3)], "01", True),
    # a gap of 2 s ends the number; 1.9 s does not
    ([("0", 1, 1.1), ("1", 3.1, 3.2)], "0", False),
    ([("0", 1, 1.1), ("1", 3.0, 3.1)], "01", True),
    # 30 s after off-hook nothing more is dialling
    ([("0", 29.8, 29.9), ("1", 30.0, 30.1)], "0", False),
    # the cap: a UK national number is 11 digits, the 12th is a card digit
    ([(c, 1 + i * 0.2, 1.1 + i * 0.2) for i, c in enumerate(NUMBER + "4929")], NUMBER, False),
    # international: 17 with the 00
    ([(c, 1 + i * 0.2, 1.1 + i * 0.2) for i, c in enumerate("00" + "4" * 20)],
     "00" + "4" * 15, False),
    # withheld prefix: 3 more
    ([(c, 1 + i * 0.2, 1.1 + i * 0.2) for i, c in enumerate("141" + NUMBER + "55")],
     "141" + NUMBER, False),
])
def test_dial_step(events, digits, still_open):
    st = _dial(events)
    assert st.digits == digits and st.open is still_open


def test_dial_step_closed_stays_closed():
    st = _dial([("0", 1, 1.1), ("1", 4, 4.1), ("2", 4.2, 4.3)])
    assert st.digits == "0" and not st.open
