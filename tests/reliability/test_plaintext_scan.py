"""The campaigns' plaintext scan reads every byte: audio containers hidden past a file's
first bytes are found, so is a test tone as headerless PCM (at 8 and 16 kHz, either byte
alignment, from MIN_TONE_SAMPLES samples on), and neither ciphertext-like bytes nor
the byte patterns of structured files are mistaken for them."""

from __future__ import annotations

import io
import json
import os
import sqlite3

import numpy as np
import pytest
import soundfile as sf

from tests.support.plaintext import MIN_TONE_SAMPLES, plaintext_files, tone_in_pcm

# The tones the scenarios, tests and line signals play (hw/linesignals.py, the scenario
# files, bench/campaigns/common.py): single tones, dial tone, the DT-AS pair, beeps.
TONES = [[300], [350, 440], [440], [500], [600], [700], [800], [900], [1000], [1100],
         [1300], [1400], [2130, 2750], [2200], [300, 1100]]


def _audio(fmt: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(800, dtype=np.int16), 8000, format=fmt)
    return buf.getvalue()


def _pcm(hz, n, rate, dbfs=-14.0, snr_db=None, seed=0) -> bytes:
    """``n`` samples of the tones in ``hz`` (peak ``dbfs``), with white noise
    ``snr_db`` below the tones' RMS if given."""
    t = np.arange(n) / rate
    x = sum(np.sin(2 * np.pi * f * t + 0.3 * i) for i, f in enumerate(hz))
    x = x / len(hz) * 10 ** (dbfs / 20)
    if snr_db is not None:
        noise_rms = np.sqrt(np.mean(x ** 2)) * 10 ** (-snr_db / 20)
        x = x + np.random.default_rng(seed).standard_normal(n) * noise_rms
    return np.clip(np.rint(x * 32768), -32768, 32767).astype("<i2").tobytes()


def test_audio_anywhere_is_found_and_random_bytes_are_not(tmp_path):
    for name, fmt in (("a.ltj", "WAV"), ("b.seg", "FLAC"), ("c.seg", "OGG")):
        (tmp_path / name).write_bytes(os.urandom(5000) + _audio(fmt) + os.urandom(100))
    (tmp_path / "d.seg").write_bytes(os.urandom(4 * 2**20))       # 4 MiB of "ciphertext"
    (tmp_path / "e.raw").write_bytes(os.urandom(3001) + _pcm([1000], 4000, 8000))
    found = sorted(p.name for p in plaintext_files(tmp_path))
    assert found == ["a.ltj", "b.seg", "c.seg", "e.raw"]


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("hz", TONES, ids=lambda h: "+".join(map(str, h)))
def test_every_test_tone_is_found_from_the_minimum_length(rate, hz):
    """MIN_TONE_SAMPLES samples of each tone, inside ciphertext-like bytes at odd and
    even byte offsets, with line noise 10 dB below the tone (RMS), are found; a fifth of
    that, which no window run can hold, is not claimed."""
    rng = np.random.default_rng(rate + hz[0])
    for off in (0, 1, 2, 3, 255, 256, 257, 511, 1001):
        for dbfs in (-10.0, -30.0):
            pcm = _pcm(hz, MIN_TONE_SAMPLES, rate, dbfs, snr_db=10.0, seed=off)
            data = rng.bytes(off) + pcm + rng.bytes(777)
            at = tone_in_pcm(data)
            assert at is not None, (off, dbfs)
            assert off - 2 <= at < off + 2 * MIN_TONE_SAMPLES
    assert tone_in_pcm(rng.bytes(11) + _pcm(hz, MIN_TONE_SAMPLES // 5, rate)
                       + rng.bytes(4000)) is None


def test_the_minimum_length_holds_at_every_sample_offset():
    rng = np.random.default_rng(7)
    pcm = _pcm([700], MIN_TONE_SAMPLES, 8000)
    for off in range(0, 2 * 256 + 2):
        assert tone_in_pcm(rng.bytes(off) + pcm + rng.bytes(600)) is not None, off


def test_structured_bytes_are_not_tones(tmp_path):
    """Zeros, text, fixed-size records repeating every 3, 4 or 5 samples (an SQLite
    index is one: exactly periodic bytes are a pure tone at rate/3), counters and a real
    SQLite file are not PCM tones."""
    rec = lambda m: b"".join(bytes([5, 3, 9, 2] * 3)[:2 * m - 1] + bytes([255 - i % 256])  # noqa: E731
                             for i in range(4000))
    samples = [bytes(1 << 16), b"\x20" * 65536,
               json.dumps([{"call": f"c{i}", "seq": i, "sha256": os.urandom(32).hex()}
                           for i in range(500)]).encode(),
               rec(3), rec(4), rec(5),
               np.arange(40000, dtype="<u4").tobytes(), np.arange(40000, dtype="<u8").tobytes()]
    for i, data in enumerate(samples):
        assert tone_in_pcm(data) is None, i
    db = tmp_path / "t.db"
    con = sqlite3.connect(db)
    con.execute("create table s (id integer primary key, call text, seq int, sha text)")
    con.execute("create index s_call on s (call, seq)")
    con.executemany("insert into s (call, seq, sha) values (?, ?, ?)",
                    [(f"c{i // 40}", i % 40, os.urandom(32).hex()) for i in range(20000)])
    con.commit()
    con.close()
    assert tone_in_pcm(db.read_bytes()) is None


def test_a_campaign_rereads_only_files_that_changed(tmp_path):
    """The power-cut campaign keeps the files found clean between restarts; a file that
    changes afterwards (a journal appended to, a database rewritten) is read again."""
    clean: dict = {}
    f = tmp_path / "journal.ltj"
    f.write_bytes(os.urandom(10000))
    assert plaintext_files(tmp_path, clean) == [] and f in clean
    f.write_bytes(os.urandom(101) + _pcm([800], 2000, 8000))
    assert plaintext_files(tmp_path, clean) == [f]
