"""Short run of the hostile-input campaign (``python -m bench.campaigns.fuzz --quick``):
each parser gets a few seconds of hypothesis-driven inputs, and only documented
LinetapError subclasses may escape (the campaign counts anything else as a crash and
exits 1). The reproducers of what the full campaign found are in
``test_fuzz_findings.py``."""

from __future__ import annotations

import pytest

from tests.reliability.campaign import run_campaign

TARGETS = ("frames", "commands", "scenario", "config", "segments")


@pytest.mark.slow
def test_parsers_raise_only_documented_errors():
    # about 4 s per target, no atheris (coverage-guided, optional) and no MQTT attacks
    # (tests/sync/test_security.py and the signed-command tests cover the broker side)
    rc, summary, out = run_campaign("fuzz", "--seed", "1", "--minutes", "0.07",
                                    "--no-atheris", "--no-mqtt", timeout=600)
    assert summary["campaign"] == "fuzz" and summary["quick"] is True
    assert {k.split("_hypothesis_")[0] for k in summary if "_hypothesis_" in k} == \
        set(TARGETS)
    for t in TARGETS:
        assert summary[f"{t}_hypothesis_execs"] > 0, t
        assert summary[f"{t}_hypothesis_crashes"] == 0, (t, out[-3000:])
        assert summary[f"{t}_hypothesis_hangs"] == 0, (t, out[-3000:])
    assert summary["violations"] == 0, out[-3000:]
    assert rc == 0
