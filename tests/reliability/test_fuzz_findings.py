"""The crashes the hostile-input campaign (``python -m bench.campaigns.fuzz``) found
(findings 2-5 in docs/reliability.md), one reproducer each, kept as regression tests.
The inputs are sealed and signed with the campaign's own context
(:mod:`tests.support.fuzzctx`). The short sweep itself is ``test_fuzz_short.py``; a
crash found but not yet fixed would be listed in the campaign's ``KNOWN`` (empty today)
and pinned here by a strict xfail reproducer until fixed.
"""

from __future__ import annotations

import json

import pytest

from tests.support.fuzzctx import Ctx


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Ctx(tmp_path_factory.mktemp("fuzz"))


# -- bugs the campaign found, now fixed: one reproducer each, kept as regression tests ------
DEEP = "[" * 100000

def test_provisioning_frame_with_deeply_nested_json():
    from provisioning import protocol
    from recorder.errors import LinetapError
    frame = protocol.encode(protocol.T_REQUEST, 1, DEEP.encode())
    (ev,) = protocol.FrameParser().feed(frame)
    with pytest.raises(LinetapError):
        ev.json()


@pytest.mark.parametrize("payload", [DEEP.encode(),
                                     json.dumps({"body": DEEP, "sig": "00"}).encode()])
def test_command_with_deeply_nested_json(payload):
    from recorder.errors import CommandRejected
    from sync import signed_commands as commands
    with pytest.raises(CommandRejected):
        commands.verify(payload, None, "dev-a")


def test_signed_command_with_a_list_as_kind(ctx):
    from recorder.errors import CommandRejected
    from sync import signed_commands as commands
    env = ctx.sign_body({"v": 1, "kind": ["delete"], "device": "dev-a", "nonce": "ab" * 16,
                         "issued": 1.8e9, "expires": 1.8e9 + 60})
    with pytest.raises(CommandRejected):
        commands.verify(env, ctx.cmd_pub, "dev-a", now=1.8e9)


def test_scenario_file_with_deeply_nested_json(tmp_path):
    from hw import scenario
    from recorder.errors import ScenarioError
    p = tmp_path / "s.json"
    p.write_text(DEEP)
    with pytest.raises(ScenarioError):
        scenario.load(p)


def test_config_with_deeply_nested_array():
    from recorder import config
    from recorder.errors import ConfigError
    with pytest.raises(ConfigError):
        config.loads("a = " + DEEP)


def _sealed(ctx, **over):
    from recorder.evidence import segfile
    h = {"v": 1, "kind": "segment", "device": "dev-a", "call": "C1", "seq": 0,
         "first_sample": 0, "samples": 400, "rate": 8000, "codec": "flac",
         "suite": segfile.suite_ids(), "start": "2026-11-25T09:00:00.000Z", **over}
    return ctx.seal(h, ctx.payloads[0])


@pytest.mark.parametrize("first_sample", ["x", float("inf")])
def test_export_of_a_sealed_segment_with_a_bad_first_sample(ctx, first_sample):
    """Anyone with the practice *public* key can seal such a file; a box could upload it."""
    from recorder.evidence import export
    _pcm, problems = export.decode_segments([(0, _sealed(ctx, first_sample=first_sample))],
                                            ctx.practice_priv, None, "flac")
    assert problems


def test_export_does_not_trust_a_huge_sample_count(ctx):
    """An Opus-labelled segment claiming 10^9 samples makes export allocate 2 GB of zeros
    (and 10^10 would exhaust memory); it should be refused as malformed."""
    from recorder.evidence import export
    pcm, problems = export.decode_segments([(0, _sealed(ctx, codec="opus",
                                                        samples=10**9))],
                                           ctx.practice_priv, None, "flac")
    assert problems and len(pcm) == 0


def test_export_of_a_sealed_segment_with_boolean_samples(ctx):
    from recorder.evidence import export
    _pcm, problems = export.decode_segments([(0, _sealed(ctx, codec="opus", samples=True))],
                                            ctx.practice_priv, None, "flac")
    assert problems


@pytest.mark.parametrize("codec", [{"": "x"}, ["flac"], 7, None])
def test_export_of_a_sealed_segment_with_a_non_string_codec(ctx, codec):
    from recorder.evidence import export
    _pcm, problems = export.decode_segments([(0, _sealed(ctx, codec=codec))],
                                            ctx.practice_priv, None, "flac")
    assert problems
