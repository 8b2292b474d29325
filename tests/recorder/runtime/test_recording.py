"""End to end through the real daemon on the simulated line: what gets recorded, where
it starts and ends to the sample, pauses, announcement, and lines kept apart."""

from __future__ import annotations

import numpy as np

from tests.support.sim import tone, write_wav

RATE = 8000
Q = 10 ** (-12 / 20)


def tone_pcm(hz, start_s, n, level_dbfs=-12.0):
    """The int16 samples the simulator renders for a 'tone' event started at start_s."""
    t = (np.arange(n) + 0) / RATE
    x = np.sin(2 * np.pi * hz * t).astype(np.float64) * 10 ** (level_dbfs / 20)
    return np.clip(np.rint(x.astype(np.float32) * 32768), -32768, 32767).astype(np.int16)


def steady(line, hz, duration=60.0):
    return {"at": 0.0, "line": line, "type": "tone", "hz": hz, "duration": duration}


def only(calls):
    assert len(calls) == 1, calls.keys()
    return next(iter(calls.values()))


def test_outbound_call_sample_exact_with_preroll(sim):
    sim.run([steady(0, 1000), {"at": 5.0, "line": 0, "type": "offhook"},
             {"at": 27.25, "line": 0, "type": "onhook"}], duration=40)
    (meta, pcm), = sim.export()[0].values()
    assert meta["direction"] == "outbound"
    assert meta["offhook"] == "2026-11-25T09:00:05.000Z"
    assert meta["start"] == "2026-11-25T09:00:04.500Z"       # 0.5 s pre-roll
    assert meta["end"] == "2026-11-25T09:00:27.250Z"
    assert meta["duration_s"] == 22.25
    assert len(pcm) == int((27.25 - 4.5) * RATE)
    expect = tone_pcm(1000, 0, 40 * RATE)[int(4.5 * RATE):int(27.25 * RATE)]
    assert np.array_equal(pcm, expect)
    assert meta["segments"] == 3 and meta["integrity"]["status"] == "verified"


def test_inbound_hook_flash_and_missed_call(sim):
    sim.run([{"at": 1.0, "line": 0, "type": "ring", "until": 9.0},
             {"at": 4.0, "line": 0, "type": "offhook"},
             {"at": 10.0, "line": 0, "type": "flash", "duration": 0.2},
             {"at": 20.0, "line": 0, "type": "onhook"},
             {"at": 25.0, "line": 0, "type": "ring", "until": 33.0}], duration=45)
    store = sim.store()
    rows = store.calls()
    assert [r.state for r in rows] == ["closed", "missed"]
    meta, pcm = only(sim.export()[0])
    assert meta["direction"] == "inbound" and meta["offhook"].endswith("09:00:04.000Z")
    assert meta["end"].endswith("09:00:20.000Z")           # the flash did not end it
    assert len(meta["flashes"]) == 1 and meta["flashes"][0]["length_s"] == 0.2
    assert rows[1].segments == 0                          # a missed call has no audio


def test_two_lines_no_crosstalk(sim):
    sim.run([steady(0, 1000), steady(1, 1700),
             {"at": 2.0, "line": 0, "type": "offhook"},
             {"at": 3.0, "line": 1, "type": "offhook"},
             {"at": 15.0, "line": 0, "type": "onhook"},
             {"at": 16.0, "line": 1, "type": "onhook"}], duration=20, lines=2)
    calls, failures = sim.export()
    assert failures == 0 and len(calls) == 2
    for meta, pcm in calls.values():
        hz = 1000 if meta["line"] == 0 else 1700
        spec = np.abs(np.fft.rfft(pcm.astype(float)))
        freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
        assert abs(freqs[np.argmax(spec)] - hz) < 2
        other = 1700 if hz == 1000 else 1000
        k = np.argmin(np.abs(freqs - other))
        assert spec[k] < spec.max() * 1e-3                 # the other line is absent


def test_pause_zeros_the_paused_span_exactly(sim):
    sim.run([steady(0, 1000),
             {"at": 2.0, "line": 0, "type": "offhook"},
             {"at": 6.0, "type": "button", "button": "pause", "hold": 0.2},
             {"at": 7.0, "line": 0, "type": "tone", "hz": 2200, "duration": 3.0},
             {"at": 12.0, "type": "button", "button": "pause", "hold": 0.3},
             {"at": 20.0, "line": 0, "type": "onhook"}], duration=25)
    meta, pcm = only(sim.export()[0])
    assert meta["pauses"] == [{"start": "2026-11-25T09:00:06.000Z",
                               "end": "2026-11-25T09:00:12.300Z"}]
    first = int(1.5 * RATE)
    a, b = 6 * RATE - first, int(12.3 * RATE) - first
    assert not pcm[a:b].any()                              # exact zeros, true length
    assert pcm[a - 10:a].any() and pcm[b:b + 10].any()
    # The 2200 Hz tone played during the pause is nowhere in the recording.
    spec = np.abs(np.fft.rfft(pcm.astype(float)))
    freqs = np.fft.rfftfreq(len(pcm), 1 / RATE)
    assert spec[np.argmin(np.abs(freqs - 2200))] < spec.max() * 1e-3
    assert len(pcm) == int((20 - 1.5) * RATE)


def test_pause_ends_at_hangup_and_after_pause_max(sim):
    sim.run([steady(0, 1000),
             {"at": 2.0, "line": 0, "type": "offhook"},
             {"at": 4.0, "type": "button", "button": "pause", "hold": 0.1},
             {"at": 12.0, "line": 0, "type": "onhook"},
             {"at": 14.0, "line": 0, "type": "offhook"},
             {"at": 16.0, "type": "button", "button": "pause", "hold": 0.1},
             {"at": 28.0, "line": 0, "type": "onhook"}], duration=30, pause__max_s=5.0)
    calls, _ = sim.export()
    first, second = sorted(calls.values(), key=lambda c: c[0]["offhook"])
    assert first[0]["pauses"] == [{"start": "2026-11-25T09:00:04.000Z",
                                   "end": "2026-11-25T09:00:09.000Z"}]   # timed out
    assert second[0]["pauses"] == [{"start": "2026-11-25T09:00:16.000Z",
                                    "end": "2026-11-25T09:00:21.000Z"}]
    # After the timeout, recording resumed: audio after 21 s is there.
    pcm = second[1]
    assert pcm[(22 - 13) * RATE: (23 - 13) * RATE].any()


def test_long_press_ends_recording_for_the_rest_of_the_call(sim):
    sim.run([steady(0, 1000),
             {"at": 2.0, "line": 0, "type": "offhook"},
             {"at": 8.0, "type": "button", "button": "pause", "hold": 2.5},
             {"at": 20.0, "line": 0, "type": "onhook"}], duration=25)
    meta, pcm = only(sim.export()[0])
    assert meta["recording_ended"] == "2026-11-25T09:00:08.000Z"
    assert meta["end"] == "2026-11-25T09:00:20.000Z"
    assert len(pcm) == int((8 - 1.5) * RATE) and pcm[-10:].any()


def test_announcement_is_played_into_the_line_and_recorded(sim, tmp_path):
    ann = write_wav(tmp_path / "ann.wav", tone(440, 2.0, 0.25))
    res = sim.run([{"at": 1.0, "line": 0, "type": "ring", "until": 9.0},
                   {"at": 3.0, "line": 0, "type": "offhook"},
                   {"at": 12.0, "line": 0, "type": "onhook"}], duration=15,
                  announcement=ann, keep_playback=True)
    meta, pcm = only(sim.export()[0])
    a = meta["announcement"]
    assert a["id"] == "ann.wav" and len(a["sha256"]) == 64
    # Answer + 0.3 s delay at the earliest; never before. Running far faster than real
    # time, playback may already be queued past that, and then it starts later.
    from recorder.timebase import parse_iso
    at = round((parse_iso(a["start"]) - parse_iso("2026-11-25T09:00:00Z")) * RATE)
    assert int(3.3 * RATE) <= at < int(4.5 * RATE)
    import soundfile as sf
    clip = sf.read(str(ann), dtype="int16")[0]
    start = at - int(2.5 * RATE)
    assert np.array_equal(pcm[start:start + len(clip)], clip)   # heard exactly there
    assert np.array_equal(res.line.played[at:at + len(clip), 0], clip)


def test_recording_off_for_a_line(sim):
    from recorder import config
    cfg = config.loads("[[line]]\nindex = 1\nrecord = false\n[audio]\nlines = 2")
    sim.run([{"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 1.0, "line": 1, "type": "offhook"},
             {"at": 5.0, "line": 0, "type": "onhook"},
             {"at": 5.0, "line": 1, "type": "onhook"}], duration=8, lines=2, cfg=cfg)
    assert [r.line for r in sim.store().calls()] == [0]


def test_a_call_still_open_at_the_end_is_closed_cleanly(sim):
    sim.run([steady(0, 1000), {"at": 2.0, "line": 0, "type": "offhook"}], duration=14)
    rows = sim.store().calls()
    assert rows[0].state == "closed" and rows[0].meta["end_reason"] == "shutdown"
    meta, pcm = only(sim.export()[0])
    assert len(pcm) == int(12.5 * RATE) and meta["integrity"]["status"] == "verified"


def test_sixteen_khz(sim, tmp_path):
    """The whole path at 16 kHz: capture, segments, export. A 5 kHz tone (above the
    4 kHz an 8 kHz path can carry) comes back at 5 kHz, on the 16 kHz sample clock."""
    wide = 16000
    write_wav(tmp_path / "wide.wav", tone(5000, 2.0, 0.3, rate=wide), rate=wide)
    sim.run([{"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 2.0, "line": 0, "type": "audio", "file": "wide.wav"},
             {"at": 5.0, "line": 0, "type": "onhook"}], duration=6, rate=wide, period=800)
    row, = sim.store().calls()
    assert row.rate == wide
    meta, pcm = only(sim.export()[0])
    assert meta["duration_s"] == 4.0                       # off-hook 1 s to on-hook 5 s
    start = round((2.0 - 1.0 + 0.5) * wide)                # the WAV starts at the pre-roll
    burst = pcm[start + wide // 10:start + wide].astype(float)
    spec = np.abs(np.fft.rfft(burst))
    assert abs(np.fft.rfftfreq(len(burst), 1 / wide)[np.argmax(spec)] - 5000) < 20


def test_periodic_warning_beep(sim):
    from recorder import config
    cfg = config.loads("[announcement]\nbeep_interval_s = 5.0\nbeep_hz = 1400.0\n"
                       "beep_ms = 200.0\n")
    sim.run([{"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 18.0, "line": 0, "type": "onhook"}], duration=20, cfg=cfg)
    meta, pcm = only(sim.export()[0])
    first = int(0.5 * RATE)
    for k in (1, 2, 3):                       # beeps at 6 s, 11 s, 16 s of line time
        at = int((1.0 + 5 * k) * RATE) - first
        burst = pcm[at:at + int(0.2 * RATE)].astype(float)
        assert np.abs(burst).max() > 1000, k
        spec = np.abs(np.fft.rfft(burst))
        assert abs(np.fft.rfftfreq(len(burst), 1 / RATE)[np.argmax(spec)] - 1400) < 10
    assert not pcm[int(3 * RATE):int(5.5 * RATE)].any()      # silence between beeps


def test_long_press_across_a_segment_boundary(sim):
    """The press at 10.3 s is known to be long only at 12.3 s, after the segment ending at
    10.5 s was cut: that segment keeps 0.2 s of paused zeros, nothing after it is kept."""
    sim.run([steady(0, 1000),
             {"at": 1.0, "line": 0, "type": "offhook"},
             {"at": 10.3, "type": "button", "button": "pause", "hold": 2.5},
             {"at": 20.0, "line": 0, "type": "onhook"}], duration=25)
    meta, pcm = only(sim.export()[0])
    assert meta["recording_ended"] == "2026-11-25T09:00:10.300Z"
    assert len(pcm) == 10 * RATE and meta["segments"] == 1
    assert not pcm[int(9.8 * RATE):].any() and pcm[int(9.8 * RATE) - 10:int(9.8 * RATE)].any()
