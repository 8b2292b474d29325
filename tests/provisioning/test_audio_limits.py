"""audio-test errors name the bad value and the limit, per sampling rate."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioning import protocol
from provisioning.dispatcher import tone_limit_hz
from tests.provisioning.provhelpers import box_config, call


def test_line_out_of_range_names_it(box, fake_recorder):
    r = call(box.d, "audio_test", line=2)
    assert r["code"] == protocol.E_BAD_ARGS
    assert r["message"] == "line 2 is out of range: this box has 2 line(s), numbered 0..1"
    assert fake_recorder.requests == []


@pytest.mark.parametrize("rate,limit", [(8000, 3900), (16000, 7900)])
def test_frequency_above_the_rate_limit(box, fake_recorder, rate, limit):
    box.config_path.write_text(box_config(box.etc, box.data) + f"\n[audio]\nrate = {rate}\n")
    assert tone_limit_hz(rate) == limit
    r = call(box.d, "audio_test", hz=limit + 1)
    assert r["code"] == protocol.E_BAD_ARGS
    assert r["message"] == (f"frequency {limit + 1} Hz is outside 100..{limit} Hz, the limit "
                            f"at this box's {rate} Hz sampling rate")
    assert call(box.d, "audio_test", hz=limit, seconds=0.1)["hz"] == limit
    assert call(box.d, "audio_test", hz=99)["code"] == protocol.E_BAD_ARGS


def test_docs_give_the_limits_per_rate():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "provisioning.md").read_text()
    for rate in (8000, 16000):
        assert f"| {rate} Hz | 100..{tone_limit_hz(rate):.0f} Hz |" in doc
