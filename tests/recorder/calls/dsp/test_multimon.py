"""Cross-check gen and our decoders against multimon-ng on the same WAV files.

multimon-ng reads the files through sox (``-t wav``), which resamples them to its 22050 Hz.
Both decoders must report the same digits / numbers / names.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf

from hw import linesignals as gen
from recorder.calls.dsp import callerid, dtmf
from tests.recorder.calls.dsp.helpers import add_noise, sine_power

pytestmark = pytest.mark.skipif(
    shutil.which("multimon-ng") is None or shutil.which("sox") is None,
    reason="multimon-ng and sox are needed (apt-get install multimon-ng sox)",
)


NOISE_DB = 30.0


def multimon(path, demod: str) -> list[str]:
    out = subprocess.run(
        ["multimon-ng", "-q", "-c", "-a", demod, "-t", "wav", str(path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [line for line in out.splitlines() if line.startswith(demod + ":")]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_dtmf_agrees_with_multimon(tmp_path, rate):
    rng = np.random.default_rng(rate)
    parts, sent = [], ""
    for i in range(40):
        syms = "".join(rng.choice(list("0123456789*#ABCD"), 5))
        sent += syms
        x = gen.dtmf(
            syms,
            rate,
            on_ms=float(rng.uniform(50, 100)),
            off_ms=float(rng.uniform(50, 100)),
            level_dbfs=float(rng.uniform(-25, -8)),
            twist_db=float(rng.uniform(-4, 2)),
            # multimon-ng itself splits digits that are 1 % off frequency, so stay near nominal
            freq_offset=float(rng.uniform(-0.002, 0.002)),
        )
        x = add_noise(x, NOISE_DB, 2 * sine_power(-25.0), seed=i)
        parts += [x, np.zeros(int(0.3 * rate), np.float32)]
    audio = np.concatenate(parts)
    path = tmp_path / "dtmf.wav"
    sf.write(path, audio, rate, subtype="PCM_16")
    theirs = "".join(line.split(":", 1)[1].strip() for line in multimon(path, "DTMF"))
    ours = "".join(d for d, _, _ in dtmf.detect(sf.read(path, dtype="int16")[0], rate))
    assert ours == sent
    assert theirs == ours


def _parse_clip(line: str) -> dict:
    number = re.search(r" CID=(\S+)", line)
    name = re.search(r" CNT=(.*)$", line)
    reason = re.search(r" RACLI=(\S)", line)
    return {
        "number": number.group(1) if number else None,
        "name": name.group(1).strip() if name else None,
        "absence_reason": {"P": "withheld", "O": "unavailable"}.get(reason.group(1))
        if reason
        else None,
    }


@pytest.mark.parametrize("rate", [8000, 16000])
def test_uk_clip_agrees_with_multimon(tmp_path, rate):
    rng = np.random.default_rng(7 + rate)
    checked = 0
    for i in range(12):
        number = "0" + "".join(rng.choice(list("0123456789"), 10))
        name = "".join(rng.choice(list("ABCDEFGHIJKLMNOP RSTUVWXYZ"), 12)).strip() or None
        absence = None
        if i % 4 == 3:
            number, absence = None, ("withheld", "unavailable")[i % 2]
        when = dt.datetime(2026, 1 + i, 3 + i, i, 5 * i)
        level = float(rng.uniform(-30, -8))
        x = gen.uk_clip(number, name, when, rate, absence, level_dbfs=level)
        x = add_noise(x, 30.0, sine_power(level), seed=i)
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, x, rate, subtype="PCM_16")
        lines = multimon(path, "CLIPFSK")
        assert len(lines) == 1, lines
        theirs = _parse_clip(lines[0])
        ours = callerid.decode(sf.read(path, dtype="int16")[0], rate)
        assert ours is not None
        assert {k: ours[k] for k in theirs} == theirs
        assert (ours["number"], ours["name"], ours["absence_reason"]) == (number, name, absence)
        assert f"DATE={when:%m%d%H%M}" in lines[0]
        checked += 1
    assert checked == 12
