"""Caller ID, dialled digits and DTMF masking, end to end through the daemon."""

from __future__ import annotations


def test_cli_dialled_digits_and_masking(sim):
    sim.run([{"at": 1.0, "line": 0, "type": "cli", "number": "01632960123", "name": "J SMITH"},
             {"at": 2.0, "line": 0, "type": "ring", "until": 9.0},
             {"at": 5.3, "line": 0, "type": "offhook"},
             {"at": 9.0, "line": 0, "type": "dtmf", "digits": "4929", "on_ms": 100,
              "off_ms": 100},
             {"at": 14.0, "line": 0, "type": "onhook"},
             {"at": 16.0, "line": 1, "type": "offhook"},
             {"at": 17.0, "line": 1, "type": "dtmf", "digits": "01632960456", "on_ms": 90,
              "off_ms": 90},
             {"at": 26.0, "line": 1, "type": "onhook"}], duration=28, lines=2)
    calls, failures = sim.export()
    assert failures == 0
    inbound = [c for c in calls.values() if c[0]["direction"] == "inbound"][0]
    outbound = [c for c in calls.values() if c[0]["direction"] == "outbound"][0]
    assert inbound[0]["caller_number"] == "01632960123"
    assert inbound[0]["caller_name"] == "J SMITH"
    assert outbound[0]["dialled_digits"] == "01632960456"
    meta, pcm = inbound
    assert len(meta["masked_dtmf"]) == 4                     # times only, never digits
    first = int(4.8 * 8000)
    keyed = pcm[int(9.0 * 8000) - first:int(9.7 * 8000) - first]
    assert not keyed.any()                                   # DTMF is absent
    from recorder.dsp import dtmf
    assert dtmf.detect(pcm, 8000) == []
    rows = sim.store().calls(number="01632960123")
    assert [r.id for r in rows] == [meta["call_id"]]
