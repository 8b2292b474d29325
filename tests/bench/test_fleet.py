"""The fleet bench's simulated boxes send what a real box sends (segments the ingest
parses, manifests it verifies against the pinned identity), and its headline figures
are computed as docs/benchmarks.md says."""

from __future__ import annotations

import hashlib

import pytest

from bench.fleet import _template, summarise
from bench.fleetbox import Box, Line
from bench.fleetpki import identity
from recorder.evidence import chain, segfile
from sync import protocol


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return _template(tmp_path_factory.mktemp("fleet"))


def test_a_call_of_segments_and_its_manifest(template):
    box = Box("fb00007", "pfb00007", "", "", "", template, call_segments=3)
    line = Line(3)
    call, shas, man = line.call, [], None
    for seq in range(3):
        topic, sha, blob, man_topic, man = box.segment(line)
        t = protocol.parse_topic(topic)
        p = segfile.parse(blob, signed=False)
        assert (t.device, t.call, t.seq) == ("fb00007", call, seq)
        assert (p.header["device"], p.header["call"], p.header["seq"]) == ("fb00007", call, seq)
        assert p.sealed == template["sealed"]                  # pre-sealed: replayed as is
        assert sha == hashlib.sha256(blob).hexdigest()
        shas.append(sha)
        assert (man is None) == (seq < 2)
    assert protocol.parse_topic(man_topic).call == call
    header, problems = chain.check_manifest(man, call, "fb00007",
                                            identity("fb00007").public_key())
    assert problems == []
    assert [s["sha256"] for s in header["segments"]] == shas
    # Another box's identity is not this box's: the ingest would refuse the manifest.
    _h, problems = chain.check_manifest(man, call, "fb00007",
                                        identity("fb00008").public_key())
    assert problems == ["signed by a different device"]
    assert line.call != call and line.seq == 0          # the next call began


def _step(boxes, window, p99, unacked, ms):
    return {"boxes": boxes, "saturated_window": window, "segments_per_s": boxes * 0.4,
            "ack_p50_s": p99 / 2, "ack_p99_s": p99, "unacked": unacked,
            "real_time": not window and p99 <= 2.0 and not unacked,
            "cpu_ms_per_segment": ms}


MS = {"broker": 0.25, "workers": 1.5, "db": 0.25, "publishers": 0.5}


@pytest.mark.parametrize("steps, held, cores_for_800, fleet", [
    ([_step(100, 0, 0.5, 0, MS), _step(200, 0, 1.9, 0, MS), _step(50, 4, 3.0, 0, MS)],
     200, 1.6, 2000),
    ([_step(100, 0, 2.5, 0, MS), _step(50, 4, 3.0, 0, MS)], 0, 1.6, 2000),
    ([_step(100, 0, 0.5, 3, MS), _step(50, 4, 3.0, 0, MS)], 0, 1.6, 2000),
    ([_step(50, 4, 3.0, 0, dict(MS, workers=3.5))], 0, 3.2, 1111),
])
def test_headline_figures(steps, held, cores_for_800, fleet):
    out = summarise({"steps": steps, "bare_segments_per_s": 100.0,
                     "bare_cpu_ms_per_segment": 1.0}, cores=2)
    assert out["largest_real_time_fleet"] == held
    assert out["cores_for_800"] == cores_for_800
    assert out["cpu_bound_fleet"] == fleet
    assert out["segments_per_s"] == steps[-1]["segments_per_s"]       # saturation
    assert out["cpu_ratio"] == round(1.0 / (out["upstream_cpu_ms_per_segment"]), 3)
