"""Scenario files: every problem is named, and nothing half-valid gets through."""

from __future__ import annotations

import json

import pytest

from hw import scenario
from recorder.errors import ScenarioError

BASE = {"rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": 60.0, "lines": 2}


def load(tmp_path, events=(), **top):
    raw = {**BASE, "events": list(events), **top}
    p = tmp_path / "s.json"
    p.write_text(json.dumps(raw))
    return scenario.load(p)


def problems(tmp_path, events=(), **top):
    with pytest.raises(ScenarioError) as ei:
        load(tmp_path, events, **top)
    return "\n".join(ei.value.problems)


def test_the_design_brief_example_loads(tmp_path):
    import numpy as np
    import soundfile as sf
    sf.write(str(tmp_path / "caller.wav"), np.zeros(8000, np.float32), 8000)
    sc = load(tmp_path, [
        {"at": 1.0, "line": 0, "type": "cli", "number": "01632960123", "name": "J SMITH"},
        {"at": 2.0, "line": 0, "type": "ring", "until": 7.0},
        {"at": 7.3, "line": 0, "type": "offhook"},
        {"at": 7.5, "line": 0, "type": "audio", "file": "caller.wav", "gain_db": 0},
        {"at": 12.0, "line": 0, "type": "dtmf", "digits": "1234", "on_ms": 80, "off_ms": 80},
        {"at": 20.0, "type": "button", "button": "pause", "hold": 0.1},
        {"at": 45.0, "line": 0, "type": "onhook"}])
    assert len(sc.events) == 7 and sc.total_frames == 480000


@pytest.mark.parametrize("events,top,expect", [
    ([], {"rat": 8000}, "unknown top-level key 'rat' (did you mean 'rate'?)"),
    ([], {"rate": 44100}, "'rate' must be 8000 or 16000"),
    ([], {"lines": 5}, "'lines' must be 1 to 4"),
    ([], {"start": "yesterday"}, "'start' 'yesterday' is not an ISO 8601 time"),
    ([], {"start": "2026-11-25T09:00:00"}, "has no time zone"),
    ([], {"duration": "60"}, "'duration' must be integer or number"),
    ([{"at": 1, "line": 0, "type": "offhok"}], {}, "unknown type 'offhok' (did you mean "
     "'offhook'?)"),
    ([{"at": 1, "line": 0, "type": "ring", "untill": 3}], {}, "unknown key 'untill' (did "
     "you mean 'until'?)"),
    ([{"at": 1, "line": 0, "type": "ring"}], {}, "missing required key 'until'"),
    ([{"at": 99, "line": 0, "type": "offhook"}], {}, "outside the scenario"),
    ([{"at": 1, "line": 3, "type": "offhook"}], {}, "line 3 does not exist"),
    ([{"at": 1, "line": 0, "type": "dtmf", "digits": "12x"}], {}, "'digits' must be"),
    ([{"at": 1, "type": "button", "button": "mute"}], {}, "unknown button 'mute'"),
    ([{"at": 1, "line": 0, "type": "audio", "file": "nope.wav"}], {}, "audio file not found"),
    ([{"at": 1, "line": 0, "type": "offhook"}, {"at": 2, "line": 0, "type": "offhook"}], {},
     "already off-hook"),
    ([{"at": 1, "line": 0, "type": "onhook"}], {}, "is not off-hook"),
    ([{"at": "1", "line": 0, "type": "offhook"}], {}, "'at' must be a number"),
    ([{"at": 1, "line": 0, "type": "cli"}], {}, "give 'number' or 'absence'"),
])
def test_bad_scenarios_are_named(tmp_path, events, top, expect):
    assert expect in problems(tmp_path, events, **top)


def test_every_problem_is_reported_at_once(tmp_path):
    text = problems(tmp_path, [{"at": 1, "line": 9, "type": "offhook"},
                               {"at": 2, "line": 0, "type": "bogus"}], lines=7)
    assert "'lines' must be 1 to 4" in text and "unknown type 'bogus'" in text


def test_wrong_audio_format_is_named(tmp_path):
    import numpy as np
    import soundfile as sf
    sf.write(str(tmp_path / "st.wav"), np.zeros((100, 2), np.float32), 8000)
    sf.write(str(tmp_path / "hi.wav"), np.zeros(100, np.float32), 44100)
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    text = problems(tmp_path, [
        {"at": 1, "line": 0, "type": "audio", "file": "st.wav"},
        {"at": 1, "line": 0, "type": "audio", "file": "hi.wav"},
        {"at": 1, "line": 0, "type": "audio", "file": "junk.wav"}])
    assert "must be mono" in text and "44100 Hz" in text and "not a readable WAV" in text


def test_not_json(tmp_path):
    p = tmp_path / "s.json"
    p.write_text("{nope")
    with pytest.raises(ScenarioError, match="not valid JSON"):
        scenario.load(p)
