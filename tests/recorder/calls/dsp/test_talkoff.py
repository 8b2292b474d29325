"""Talk-off: no false digits over synthetic speech (espeak-ng) and music-like material.

Default run: 60 minutes at 8 kHz plus 10 minutes at 16 kHz (building the corpus takes a few
seconds; espeak-ng runs far faster than real time). ``LINETAP_LONG=1`` runs 3 hours at
8 kHz and 1 hour at 16 kHz. The corpus is cached in a pytest session tmp dir.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from hw import linesignals as gen
from recorder.calls.dsp import callerid, dtmf
from tests.support import corpus

LONG = os.environ.get("LINETAP_LONG") == "1"
pytestmark = pytest.mark.skipif(
    corpus.tools_available() is not None,
    reason=f"talk-off corpus needs {corpus.tools_available()} (apt-get install espeak-ng sox)",
)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("talkoff")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("rate", "minutes"), [(8000, 180 if LONG else 60), (16000, 60 if LONG else 10)]
)
def test_no_digits_in_speech_and_music(corpus_dir, rate, minutes):
    x = corpus.build(minutes, rate, corpus_dir)
    assert x.size >= minutes * 60 * rate
    assert dtmf.detect(x, rate) == []


@pytest.mark.slow
def test_digits_still_found_over_speech(corpus_dir):
    # Digits mixed over speech, 20 dB above its RMS (two tones at -13 dBFS each), are all
    # found; docs/dsp.md has the measured rate at 10 and 15 dB.
    rate = 8000
    speech = corpus.build(2, rate, corpus_dir)[: rate * 30]
    rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    speech = speech * (10 ** (-30 / 20) / rms)  # speech at -30 dBFS RMS
    digits = gen.dtmf("0123456789", rate, on_ms=60, off_ms=60, level_dbfs=-13.0)
    x = speech.copy()
    x[rate * 5 : rate * 5 + digits.size] += digits
    assert "".join(d for d, _, _ in dtmf.detect(x, rate)) == "0123456789"


@pytest.mark.slow
def test_no_caller_id_in_speech(corpus_dir):
    x = corpus.build(10, 8000, corpus_dir)
    assert callerid.decode(x, 8000, "uk") is None
    assert callerid.decode(x, 8000, "bell202") is None
