"""No caller number, caller name or dialled number in clear on the box (issue 15 item 3).

The daemon records several calls on the simulated line, the box's own tools list and
search them, and then every byte of every file left in the data and run folders is
scanned for each number in every form and each name (tests/support/personal_scan.py).
"""

from __future__ import annotations

import json
import logging

import pytest

from recorder import cli
from recorder.evidence import audit
from recorder.privacy import mask_number
from tests.support.personal_scan import masked_forms, personal_traces

ANSWERED = ("01632960123", "J SMITH")
MISSED = ("01632960777", "A PATEL")
SECOND = ("07700900123", "MRS JONES")
DIALLED = "01632960456"
NUMBERS = (ANSWERED[0], MISSED[0], SECOND[0], DIALLED)
NAMES = (ANSWERED[1], MISSED[1], SECOND[1])


def _run(sim):
    sim.run([
        {"at": 1.0, "line": 0, "type": "cli", "number": ANSWERED[0], "name": ANSWERED[1]},
        {"at": 2.0, "line": 0, "type": "ring", "until": 9.0},
        {"at": 5.3, "line": 0, "type": "offhook"},
        {"at": 12.0, "line": 0, "type": "onhook"},
        {"at": 1.0, "line": 1, "type": "cli", "number": MISSED[0], "name": MISSED[1]},
        {"at": 2.0, "line": 1, "type": "ring", "until": 8.0},         # nobody answers
        {"at": 14.0, "line": 1, "type": "offhook"},
        {"at": 15.0, "line": 1, "type": "dtmf", "digits": DIALLED, "on_ms": 90,
         "off_ms": 90},
        {"at": 24.0, "line": 1, "type": "onhook"},
        {"at": 15.0, "line": 0, "type": "cli", "number": SECOND[0], "name": SECOND[1]},
        {"at": 16.0, "line": 0, "type": "ring", "until": 22.0},
        {"at": 19.3, "line": 0, "type": "offhook"},
        {"at": 26.0, "line": 0, "type": "onhook"}], duration=28, lines=2)


@pytest.fixture
def recorded(sim):
    """The scenario recorded, with every log record of the run kept in a file in the
    run folder (journald's copy on a box), so that the scan reads the logs too."""
    run = sim.data / "run"
    run.mkdir(parents=True)
    handler = logging.FileHandler(run / "daemon.log", encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        _run(sim)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
        handler.close()
    return sim


def _assert_no_traces(data):
    traces = personal_traces(data, NUMBERS, NAMES)
    assert traces == [], "\n".join(f"{t.path.relative_to(data)} @{t.offset}: {t.what} "
                                   f"in {t.context!r}" for t in traces)


def test_no_personal_data_in_any_file_the_box_leaves(recorded, tmp_path, capsys):
    sim = recorded
    names = {p.name for p in sim.data.rglob("*") if p.is_file()}
    assert {"linetap.db", "audit.log", "status.json", "daemon.log"} <= names
    _assert_no_traces(sim.data)                       # what the daemon left
    # The box's own tools run too: their writes (audit entries) are scanned as well.
    assert cli.main(["calls", "--data-dir", str(sim.data)]) == 0
    assert cli.main(["calls", "--data-dir", str(sim.data), "--number", "+44 1632 960123",
                     "--key", str(sim.priv)]) == 0
    calls, failures = sim.export(out=tmp_path / "exported")       # exports are excluded
    assert failures == 0
    capsys.readouterr()
    # The numbers were recorded (sealed), so the scan has something to miss.
    metas = [m for m, _pcm in calls.values()]
    assert {m["caller_number"] for m in metas} >= {ANSWERED[0], SECOND[0]}
    assert {m["caller_name"] for m in metas} >= {ANSWERED[1], SECOND[1]}
    assert DIALLED in {m["dialled_digits"] for m in metas}
    assert not list(sim.data.glob("*.bak-*"))
    _assert_no_traces(sim.data)
    # The audit log's one exception: the masked number of the search, at most the
    # first 4 and the last 2 digits.
    text = (sim.data / audit.AUDIT_FILE).read_bytes()
    masked = masked_forms(text)
    assert mask_number("+44 1632 960123").encode() in text
    assert masked and all(len(a.lstrip(b"+")) <= 4 and len(b) <= 2 for a, b in masked)


def test_calls_lists_masked_numbers_and_searches_only_with_the_key(recorded, capsys):
    sim = recorded
    assert cli.main(["calls", "--data-dir", str(sim.data), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["number"] for r in rows) == sorted(mask_number(n) for n in NUMBERS)
    assert all(set(r) & {"caller", "dialled", "caller_number", "name"} == set()
               for r in rows)
    # Without the key: a clear error, and no listing.
    assert cli.main(["calls", "--data-dir", str(sim.data), "--number", ANSWERED[0]]) == 2
    out = capsys.readouterr()
    assert "needs --key" in out.err and out.out == ""
    # With it: national, +44, 0044 and spaced forms all find the call; the dialled
    # number finds the outbound call; the missed call's number is found too.
    for form, direction, state in (
            (ANSWERED[0], "inbound", "closed"), ("+441632960123", "inbound", "closed"),
            ("01632 960 123", "inbound", "closed"), ("0044 1632 960123", "inbound", "closed"),
            (DIALLED, "outbound", "closed"), ("+44 1632 960777", "inbound", "missed")):
        assert cli.main(["calls", "--data-dir", str(sim.data), "--json", "--number", form,
                         "--key", str(sim.priv)]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert (row["direction"], row["state"]) == (direction, state), form
    assert cli.main(["calls", "--data-dir", str(sim.data), "--json", "--number",
                     "01632960999", "--key", str(sim.priv)]) == 0
    assert json.loads(capsys.readouterr().out) == []
