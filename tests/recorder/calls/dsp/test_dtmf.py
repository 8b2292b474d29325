"""DTMF detector: spec-limit table tests (Q.24-style), timing, streaming, hostile input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw import linesignals as gen
from recorder.calls.dsp import dtmf
from recorder.calls.dsp.common import DBM0_TO_DBFS, DspInputError
from recorder.calls.dsp.dtmf import DtmfDetector, ToneMeasure, judge
from tests.recorder.calls.dsp.helpers import add_noise, pad, sine_power

RATES = (8000, 16000)
ALL = "123A456B789C*0#D"


def digits_of(x, rate):
    return "".join(d for d, _, _ in dtmf.detect(x, rate))


def sequence(rate, on_ms=80.0, off_ms=80.0, **kw):
    return pad(gen.dtmf(ALL, rate, on_ms=on_ms, off_ms=off_ms, **kw), rate)


@pytest.mark.parametrize("rate", RATES)
def test_all_symbols_and_edges(rate):
    x = sequence(rate)
    found = dtmf.detect(x, rate)
    assert "".join(d for d, _, _ in found) == ALL
    for i, (_, start_s, end_s) in enumerate(found):
        t0 = 0.1 + i * 0.160
        t1 = t0 + 0.080
        # Brackets the whole tone, and not by much more than the 2 ms margin.
        assert start_s <= t0 and end_s >= t1
        assert t0 - start_s <= 0.004 and end_s - t1 <= 0.004


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("offset", "expect"),
    [(0.0, ALL), (0.015, ALL), (-0.015, ALL), (0.035, ""), (-0.035, ""), (0.05, ""), (-0.05, "")],
)
def test_frequency_offset(rate, offset, expect):
    assert digits_of(sequence(rate, freq_offset=offset), rate) == expect


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("on_ms", "expect"), [(40, ALL), (45, ALL), (100, ALL), (20, ""), (15, ""), (10, "")]
)
def test_duration(rate, on_ms, expect):
    assert digits_of(sequence(rate, on_ms=on_ms, off_ms=60), rate) == expect


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("twist_db", "expect"),
    [(0.0, ALL), (-8.0, ALL), (4.0, ALL), (-12.0, ""), (-14.0, ""), (8.0, ""), (10.0, "")],
)
def test_twist(rate, twist_db, expect):
    # twist = high-group level minus low-group level; negative = normal twist.
    # Keep the weaker tone at -20 dBFS so only twist is under test.
    low = -20.0 if twist_db > 0 else -20.0 - twist_db
    assert digits_of(sequence(rate, level_dbfs=low, twist_db=twist_db), rate) == expect


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("level_dbm0", "expect"),
    [(-3.0, ALL), (-29.0, ALL), (-20.0, ALL), (-41.0, ""), (-45.0, "")],
)
def test_level(rate, level_dbm0, expect):
    level = level_dbm0 + DBM0_TO_DBFS
    assert digits_of(sequence(rate, level_dbfs=level), rate) == expect


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("offset", [0.0, 0.015, -0.015])
@pytest.mark.parametrize("level_dbm0", [-3.0, -29.0])
def test_noise_15db_snr_worst_case(rate, offset, level_dbm0):
    level = level_dbm0 + DBM0_TO_DBFS
    x = sequence(rate, on_ms=40, off_ms=40, level_dbfs=level, freq_offset=offset)
    noisy = add_noise(x, 15.0, 2 * sine_power(level), seed=int(1000 * offset) + rate)
    assert digits_of(np.clip(noisy, -1, 1), rate) == ALL


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("twist_db", [-8.0, 4.0])
def test_noise_with_twist(rate, twist_db):
    low = -20.0 if twist_db > 0 else -20.0 - twist_db
    x = sequence(rate, on_ms=40, off_ms=40, level_dbfs=low, twist_db=twist_db)
    power = sine_power(low) + sine_power(low + twist_db)
    assert digits_of(add_noise(x, 15.0, power, seed=7), rate) == ALL


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize(
    ("gap_ms", "expect"), [(40, "55"), (60, "55"), (10, "5"), (5, "5"), (0, "5")]
)
def test_interdigit_gap_and_interruption(rate, gap_ms, expect):
    x = pad(gen.dtmf("55", rate, on_ms=60, off_ms=gap_ms), rate)
    assert digits_of(x, rate) == expect


@pytest.mark.parametrize("rate", RATES)
def test_different_digits_40ms_pause(rate):
    assert digits_of(sequence(rate, on_ms=40, off_ms=40), rate) == ALL


@pytest.mark.parametrize("rate", RATES)
def test_dial_tone_10s(rate):
    x = gen.tone((350.0, 450.0), 10.0, rate, -13.0)
    assert dtmf.detect(x, rate) == []
    noisy = add_noise(x, 20.0, 2 * sine_power(-13.0), seed=3)
    assert dtmf.detect(noisy, rate) == []


@pytest.mark.parametrize("rate", RATES)
def test_silence_and_noise_only(rate):
    assert dtmf.detect(np.zeros(rate * 5, np.float32), rate) == []
    rng = np.random.default_rng(1)
    assert dtmf.detect(rng.normal(0, 0.1, rate * 5).astype(np.float32), rate) == []


@pytest.mark.parametrize("rate", RATES)
def test_int16_equals_float(rate):
    x = sequence(rate)
    i16 = np.round(x * 32767).astype(np.int16)
    assert digits_of(i16, rate) == ALL


def test_tone_at_stream_start_and_end():
    rate = 8000
    x = gen.dtmf("19", rate, on_ms=80, off_ms=80)
    found = dtmf.detect(x, rate)
    assert [d for d, _, _ in found] == ["1", "9"]
    assert found[0][1] == 0.0
    assert found[-1][2] == pytest.approx(x.size / rate)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("seed", range(6))
def test_streaming_equals_batch_random_chunks(rate, seed):
    rng = np.random.default_rng(seed)
    x = gen.dtmf("0123456789*#ABCD", rate, on_ms=50 + 10 * seed, off_ms=45)
    x = add_noise(pad(x, rate, 0.037, 0.003), 20.0, 2 * sine_power(-10.0), seed=seed)
    batch = [(d, round(s * rate), round(e * rate)) for d, s, e in dtmf.detect(x, rate)]
    det = DtmfDetector(rate)
    got = []
    i = 0
    while i < x.size:
        n = int(rng.choice([0, 1, 7, 39, 160, 333, 1000, 4000]))
        got += det.feed(x[i : i + n])
        i += n
    got += det.flush()
    assert got == batch
    assert "".join(d for d, _, _ in got) == "0123456789*#ABCD"


def test_streaming_reports_soon_after_tone_end():
    rate = 8000
    det = DtmfDetector(rate)
    x = pad(gen.dtmf("7", rate, on_ms=60), rate, 0.0, 0.0)
    assert det.feed(x) == []
    got = det.feed(np.zeros(int(0.15 * rate), np.float32))
    assert [d for d, _, _ in got] == ["7"]


def test_feed_copies_a_reused_buffer():
    rate = 8000
    x = pad(gen.dtmf("159", rate), rate)
    det = DtmfDetector(rate)
    block = np.zeros(160, np.float32)
    got = []
    for i in range(0, x.size - 159, 160):
        block[:] = x[i : i + 160]  # the caller overwrites its buffer after every call
        got += det.feed(block)
    got += det.flush()
    assert "".join(d for d, _, _ in got) == "159"


_OK = ToneMeasure("5", 0.0, 400.0, 0.0, 0.0, -20.0, -20.0, 0.0, 0.97)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"freq_error_lo": 0.02}, None),
        ({"freq_error_hi": -0.021}, "frequency"),
        ({"digit": "C", "freq_error_lo": -0.015, "freq_error_hi": 0.015}, None),  # 1.975
        ({"digit": "C", "freq_error_lo": -0.02, "freq_error_hi": 0.02}, "harmonic"),  # 1.995
        ({"digit": "5", "freq_error_lo": -0.02, "freq_error_hi": 0.02}, None),  # 1.806
        ({"end": 240.0}, None),  # 30 ms at 8 kHz
        ({"end": 200.0}, "duration"),
        ({"level_lo_dbfs": -37.0}, None),
        ({"level_hi_dbfs": -39.0}, "level"),
        ({"twist_db": -10.0}, None),
        ({"twist_db": -10.5}, "twist"),
        ({"twist_db": 6.0}, None),
        ({"twist_db": 6.5}, "twist"),
        ({"purity": 0.90}, None),
        ({"purity": 0.89}, "purity"),
    ],
)
def test_judge_table(changes, reason):
    from dataclasses import replace

    assert judge(replace(_OK, **changes), 8000) == reason


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(0, np.float32),
        np.array([0.0, np.nan, 0.0]),
        np.array([0.0, np.inf]),
        np.zeros(100, np.int32),
        np.zeros((2, 100), np.float32),
        ["a", "b"],
    ],
)
def test_hostile_samples(bad):
    with pytest.raises(DspInputError):
        dtmf.detect(bad, 8000)


@pytest.mark.parametrize("rate", [0, 44100, 8000.0, "8000", None, True, -8000])
def test_hostile_rate(rate):
    with pytest.raises(DspInputError):
        dtmf.detect(np.zeros(100, np.float32), rate)
    with pytest.raises(ValueError):
        DtmfDetector(rate)


def test_feed_after_flush_is_an_error():
    det = DtmfDetector(8000)
    det.flush()
    with pytest.raises(DspInputError):
        det.feed(np.zeros(10, np.float32))


def test_feed_accepts_empty_blocks():
    det = DtmfDetector(8000)
    assert det.feed(np.zeros(0, np.int16)) == []


@pytest.mark.parametrize("rate", RATES)
def test_edges_bracket_tones_in_noise(rate):
    """[start, end) contains every tone, over-reaching by at most 5 ms (docs/dsp.md table)."""
    before, after = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        on_ms = float(rng.uniform(40, 120))
        level, twist = float(rng.uniform(-30, -8)), float(rng.uniform(-8, 4))
        x = gen.dtmf(
            "1597*#AD",
            rate,
            on_ms=on_ms,
            off_ms=60,
            level_dbfs=level,
            twist_db=twist,
            freq_offset=float(rng.uniform(-0.015, 0.015)),
        )
        lead = int(rng.uniform(0.05, 0.1) * rate)
        x = pad(x, rate, lead / rate, 0.1)
        x = add_noise(x, 15.0, sine_power(level) + sine_power(level + twist), seed)
        det = DtmfDetector(rate)
        got = det.feed(x) + det.flush()
        assert "".join(d for d, _, _ in got) == "1597*#AD"
        n_on, n_off = round(on_ms * rate / 1000), round(60 * rate / 1000)
        for i, (_, start, end) in enumerate(got):
            t0 = lead + i * (n_on + n_off)
            before.append(t0 - start)
            after.append(end - (t0 + n_on))
    assert min(before) > 0 and min(after) > 0
    assert max(before) <= 0.005 * rate and max(after) <= 0.005 * rate


@settings(max_examples=25, deadline=None, database=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=40))
def test_streaming_any_chunking_hypothesis(cuts):
    rate = 8000
    x = _HYPO_SIGNAL
    det = DtmfDetector(rate)
    got, i, j = [], 0, 0
    while i < x.size:
        n = cuts[j % len(cuts)]
        got += det.feed(x[i : i + n])
        i, j = i + n, j + 1
        if n == 0 and all(c == 0 for c in cuts):
            break
    got += det.feed(x[i:]) + det.flush()
    assert got == _HYPO_BATCH


_HYPO_SIGNAL = add_noise(
    pad(gen.dtmf("1A5#", 8000, on_ms=45, off_ms=40, twist_db=-3), 8000, 0.013, 0.0),
    18.0,
    2 * sine_power(-10.0),
    seed=11,
)
_HYPO_BATCH = [(d, round(s * 8000), round(e * 8000)) for d, s, e in dtmf.detect(_HYPO_SIGNAL, 8000)]


def test_one_huge_feed_equals_detect():
    rate = 8000
    x = np.tile(sequence(rate), 6)
    det = DtmfDetector(rate)
    got = det.feed(x) + det.flush()
    assert [(d, s / rate, e / rate) for d, s, e in got] == dtmf.detect(x, rate)
    assert "".join(d for d, _, _ in got) == ALL * 6
