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
    # Times only, never digits. The masking detector's spans of digits 100 ms apart
    # join into one span (a tone's span reaches its analysis window past each edge).
    assert meta["masked_dtmf"]
    assert all(set(m) == {"start", "end"} for m in meta["masked_dtmf"])
    first = int(4.8 * 8000)
    keyed = pcm[int(9.0 * 8000) - first:int(9.7 * 8000) - first]
    assert not keyed.any()                                   # DTMF is absent
    from recorder.calls.dsp import dtmf
    assert dtmf.detect(pcm, 8000) == []
    # The store keeps the number only sealed: the search opens it with the practice key.
    from recorder.evidence import keys, personal
    rows, unreadable = personal.with_number(sim.store().calls(),
                                            keys.load_practice_private(sim.priv),
                                            "+44 1632 960123")
    assert [r.id for r in rows] == [meta["call_id"]] and unreadable == 0


def test_subject_access_export_by_number(sim, tmp_path):
    from recorder import cli
    sim.run([{"at": 1.0, "line": 0, "type": "cli", "number": "01632960123"},
             {"at": 2.0, "line": 0, "type": "ring", "until": 6.0},
             {"at": 3.3, "line": 0, "type": "offhook"},
             {"at": 8.0, "line": 0, "type": "onhook"},
             {"at": 10.0, "line": 0, "type": "cli", "number": "01632960999"},
             {"at": 11.0, "line": 0, "type": "ring", "until": 15.0},
             {"at": 12.3, "line": 0, "type": "offhook"},
             {"at": 16.0, "line": 0, "type": "onhook"},
             {"at": 18.0, "line": 0, "type": "offhook"},
             {"at": 19.0, "line": 0, "type": "dtmf", "digits": "01632960123", "on_ms": 90,
              "off_ms": 90},
             {"at": 26.0, "line": 0, "type": "onhook"}], duration=28)
    out = tmp_path / "sar"
    rc = cli.main(["export", "--data-dir", str(sim.data), "--key", str(sim.priv),
                   "--out", str(out), "--number", "01632960123"])
    assert rc == 0
    import json
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert sorted(m["direction"] for m in metas) == ["inbound", "outbound"]
    assert all("01632960123" in (m["caller_number"] or "", m["dialled_digits"] or "")
               for m in metas)
    assert len(list(out.glob("*.wav"))) == 2


def test_a_held_key_is_masked_from_its_first_sample(sim):
    # A key held for 3 s is reported only when it is released. The recorder waits while
    # the detector has the tone open, so none of it is cut (into a segment or the
    # journal) before the mask is known: before, only the last second was masked.
    sim.run([{"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 3.0, "line": 0, "type": "dtmf", "digits": "7", "on_ms": 3000,
              "off_ms": 100},
             {"at": 9.0, "line": 0, "type": "onhook"}], duration=10)
    calls, failures = sim.export()
    assert failures == 0
    [(meta, pcm)] = list(calls.values())
    assert len(meta["masked_dtmf"]) == 1
    first = int(0.5 * 8000)
    keyed = pcm[int(3.0 * 8000) - first:int(6.0 * 8000) - first]
    assert len(keyed) == 3 * 8000 and not keyed.any()
    from recorder.calls.dsp import dtmf
    assert dtmf.detect(pcm, 8000) == []
