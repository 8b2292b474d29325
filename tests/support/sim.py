"""Helpers shared by the recorder tests (imported, not collected)."""

from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from hw import scenario as scen
from recorder import config
from recorder.evidence import keys
from recorder.runtime import simulate
from recorder.storage.store import Store

RATE = 8000


def write_wav(path, samples, rate=RATE):
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")
    return path


def tone(hz, seconds, level=0.3, rate=RATE):
    t = np.arange(int(round(seconds * rate))) / rate
    return (level * np.sin(2 * np.pi * hz * t)).astype(np.float32)


class Sim:
    """Run scenarios through the real daemon and read back what it stored."""

    def __init__(self, tmp_path, practice_keys):
        self.tmp = tmp_path
        self.priv, self.pub = practice_keys
        self.data = tmp_path / "data"

    def scenario(self, events, duration=30.0, lines=1, rate=RATE, **extra):
        raw = {"rate": rate, "start": "2026-11-25T09:00:00Z", "duration": duration,
               "lines": lines, "events": events, **extra}
        p = self.tmp / "scenario.json"
        p.write_text(json.dumps(raw))
        return scen.load(p)

    def run(self, events, duration=30.0, lines=1, announcement=None, cfg=None,
            keep_playback=False, rate=RATE, **over):
        sc = self.scenario(events, duration, lines, rate=rate)
        cfg = simulate.sim_config(cfg or config.Config(), sc, str(self.data), str(self.pub),
                                  announcement and str(announcement))
        cfg = cfg.replace(audio__period_frames=over.pop("period", 400), **over)
        return simulate.run(sc, cfg, keep_playback=keep_playback)

    def store(self):
        return Store(self.data)

    def export(self, out=None, **kw):
        from recorder.evidence.export import export_calls
        from recorder.storage.store import device_key_for
        out = out or self.tmp / "out"
        done, failures = export_calls(self.store(), keys.load_practice_private(self.priv),
                                      out, device_key=device_key_for(self.data),
                                      data_dir=self.data, **kw)
        calls = {}
        for d in done:
            meta = json.loads((out / f"{d['call_id']}.json").read_text())
            wav = out / f"{d['call_id']}.wav"
            pcm = sf.read(str(wav), dtype="int16")[0] if wav.exists() else None
            calls[d["call_id"]] = (meta, pcm)
        return calls, failures
