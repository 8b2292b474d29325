"""The masking detector: every keyed digit is covered, named or not, also under speech;
speech alone is rarely blanked; streaming equals batch."""

from __future__ import annotations

import numpy as np
import pytest

from hw import linesignals as gen
from recorder.calls.dsp.common import DspInputError
from recorder.calls.dsp.dtmf_mask import DtmfMasker, mask_spans
from tests.recorder.calls.dsp.helpers import add_noise, pad, sine_power
from tests.support import corpus

GUARD_S = 0.03          # the call processor's guard either side of a span
SYMS = "0123456789*#ABCD"


def _covered(spans, rate, n, guard_s=GUARD_S):
    m = np.zeros(n, bool)
    g = int(guard_s * rate)
    for a, b in spans:
        m[max(0, int(a * rate) - g):int(b * rate) + g] = True
    return m


def _masked_digits(x, rate, starts, on, guard_s=GUARD_S):
    m = _covered(mask_spans(x, rate), rate, x.size, guard_s)
    return sum(bool(m[s:s + on].all()) for s in starts)


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("on_ms, level, twist, offset", [
    (70, -10.0, 0.0, 0.0), (40, -30.0, 0.0, 0.0), (70, -20.0, -8.0, 0.015),
    (70, -20.0, 4.0, -0.015), (100, -40.0, 0.0, 0.0), (70, -25.0, 0.0, 0.02)])
def test_every_clean_digit_is_covered_without_guard(rate, on_ms, level, twist, offset):
    """All 16 symbols, at the spec's limits and beyond (level -40 dBFS, 2 % off): each
    tone lies wholly inside a span, before the processor's guard is added."""
    x = pad(gen.dtmf(SYMS, rate, on_ms=on_ms, off_ms=200, level_dbfs=level,
                     twist_db=twist, freq_offset=offset), rate)
    per, on, lead = int((on_ms + 200) * rate / 1000), int(on_ms * rate / 1000), int(0.1 * rate)
    starts = [lead + i * per for i in range(len(SYMS))]
    assert _masked_digits(x, rate, starts, on, guard_s=0.0) == len(SYMS)
    assert len(mask_spans(x, rate)) == len(SYMS)       # 200 ms apart: one span each


@pytest.mark.parametrize("rate", [8000, 16000])
def test_nothing_in_silence_noise_or_dial_tone(rate):
    t = np.arange(5 * rate) / rate
    dial = (0.1 * (np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 450 * t))).astype(
        np.float32)
    assert mask_spans(np.zeros(rate, np.float32), rate) == []
    assert mask_spans(add_noise(np.zeros(5 * rate, np.float32), 0, sine_power(-20), 1),
                      rate) == []
    assert mask_spans(dial, rate) == []


def test_single_tones_are_not_masked():
    """One group alone (a 1 kHz test tone, a lone 770 Hz) is not a digit."""
    rate = 8000
    t = np.arange(2 * rate) / rate
    for hz in (1000.0, 770.0, 1336.0):
        assert mask_spans((0.1 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate) == []


def test_digits_10_db_over_speech_are_masked(tmp_path):
    """Digits whose two tones are 10 dB above the speech RMS: at least 99 % masked
    (bench/dsp.py measures 400 digits at 6, 10 and 20 dB)."""
    if corpus.tools_available():
        pytest.skip(f"needs {corpus.tools_available()}")
    rate, n, on_ms, off_ms = 8000, 200, 70, 200
    rng = np.random.default_rng(11)
    syms = "".join(rng.choice(list(SYMS), n))
    d = gen.dtmf(syms, rate, on_ms=on_ms, off_ms=off_ms, level_dbfs=-30 + 10 - 3)
    speech = corpus.build(3, rate, tmp_path, seed=5)[: d.size].astype(np.float64)
    speech *= 10 ** (-30 / 20) / np.sqrt(np.mean(speech ** 2))
    x = (speech + d).astype(np.float32)
    per, on = (on_ms + off_ms) * rate // 1000, on_ms * rate // 1000
    assert _masked_digits(x, rate, [i * per for i in range(n)], on) >= 0.99 * n


@pytest.mark.slow
def test_speech_is_rarely_blanked(tmp_path):
    """On 10 minutes of the talk-off corpus, false masks blank at most 1 % of the
    speech time (with the processor's guard); bench/dsp.py has the full-hour figure."""
    if corpus.tools_available():
        pytest.skip(f"needs {corpus.tools_available()}")
    rate, parts = 8000, []
    x = corpus.build(10, rate, tmp_path, seed=1, parts=parts)
    m = _covered(mask_spans(x, rate), rate, x.size)
    speech = [m[a:b] for kind, a, b in parts if kind == "speech"]
    blanked = sum(int(s.sum()) for s in speech) / sum(s.size for s in speech)
    assert blanked <= 0.01


def test_streaming_equals_batch_and_held_key_reported_in_pieces():
    rate = 8000
    x = pad(np.concatenate([gen.dtmf("159#", rate, on_ms=70, off_ms=150, level_dbfs=-20),
                            np.zeros(rate, np.float32),
                            gen.dtmf("7", rate, on_ms=2500, level_dbfs=-20)]), rate)
    x = add_noise(x, 30, sine_power(-20), 2)
    whole = DtmfMasker(rate)
    ref = whole.feed(x) + whole.flush()
    for seed in range(5):
        r = np.random.default_rng(seed)
        m, got, i = DtmfMasker(rate), [], 0
        while i < x.size:
            k = int(r.integers(0, 4000))
            got += m.feed(x[i:i + k])
            i += k
        assert got + m.flush() == ref
    assert len(ref) >= 4 + 3                      # the 2.5 s key: pieces of <= 1 s
    key = int((0.1 + 0.73 + 1.0) * rate)          # the held key's first sample
    held = [(a, b) for a, b in ref if a >= key - 0.1 * rate]
    assert len(held) >= 3 and all(b - a <= 1.2 * rate for a, b in held)
    # the pieces leave no hole in the held key
    cov = _covered([(a / rate, b / rate) for a, b in held], rate, x.size, 0.0)
    assert cov[key:key + int(2.5 * rate)].all()


def test_settled_before_never_passes_a_span_still_to_come():
    rate = 8000
    x = pad(gen.dtmf("3", rate, on_ms=300, level_dbfs=-20), rate, 1.0, 1.0)
    m, seen = DtmfMasker(rate), []
    for i in range(0, x.size, 160):
        settled = m.settled_before()
        for a, _b in m.feed(x[i:i + 160]):
            assert a >= settled
            seen.append(a)
    assert seen or m.flush()


def test_hostile_input():
    m = DtmfMasker(8000)
    m.flush()
    with pytest.raises(DspInputError):
        m.feed(np.zeros(10, np.float32))
    with pytest.raises(DspInputError):
        DtmfMasker(11025)
    assert mask_spans(np.zeros(5, np.int16), 8000) == []
