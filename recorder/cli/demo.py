"""``make demo``: a morning at reception on a simulated 2-line box, end to end.

Makes a demo practice key, speaks the consent announcement and the callers with
espeak-ng (synthetic voice-band audio if espeak-ng or sox is missing), writes the
scenario next to them, runs the real daemon on the simulated line, exports every call
with the practice key, and prints what a practice manager would see.

The scenario: inbound calls with caller ID, outbound calls with dialled digits, a
card payment with the pause button, a hook flash (transfer), a missed call, and a
digit keyed mid-call that is masked out of the recording.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from recorder.cli import demo_upstream

RATE = 8000

LINES = {
    "announce": "This call is recorded for your safety and ours, and to help us train our "
                "staff. Recordings are kept securely for ninety days.",
    "patient1": "Hello, it's John Smith. I'd like to book an appointment with doctor Patel "
                "please, ideally on Thursday morning.",
    "recept1": "Of course. I can offer Thursday at ten past nine. Shall I book that?",
    "card": "My card number is four nine two nine, one two three four, five six seven "
            "eight, nine zero one two, expiry zero nine twenty eight.",
    "patient2": "Thank you. Can I also pay for the travel vaccination letter?",
    "recept2": "Hello, this is Oakfield Surgery calling about your blood test results.",
    "transfer": "Let me put you through to the practice nurse.",
    "nurse": "Hello, nurse Jones speaking. Your results are all normal.",
    "patient3": "Hi, I need a repeat prescription for my inhaler please.",
    "recept3": "Thanks, it will be ready to collect from the pharmacy on Friday.",
}


def speak(text: str, out: Path, voice: str = "en-gb", wpm: int = 160) -> None:
    """Speak ``text`` into ``out`` as 8 kHz mono 16-bit WAV."""
    if shutil.which("espeak-ng") and shutil.which("sox"):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "raw.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text],
                           check=True, capture_output=True)
            subprocess.run(["sox", str(raw), "-r", str(RATE), "-c", "1", "-b", "16",
                            str(out), "gain", "-n", "-6"], check=True, capture_output=True)
        return
    # Fallback: a voice-band babble (no DTMF pairs) of the right length.
    n = int(len(text) / 14 * RATE)
    rng = np.random.default_rng(len(text))
    t = np.arange(n) / RATE
    f0 = 120 + 30 * np.sin(2 * np.pi * 3 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / RATE) / k for k in range(1, 12))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    sf.write(str(out), (0.08 * x * env).astype(np.float32), RATE, subtype="PCM_16")


def duration(path: Path) -> float:
    return sf.info(str(path)).duration


def build(folder: Path) -> tuple[Path, Path]:
    """Write the audio and the scenario into ``folder``; returns (scenario, announcement)."""
    folder.mkdir(parents=True, exist_ok=True)
    voices = {"patient1": "en-gb", "recept1": "en-gb+f3", "card": "en-gb", "patient2":
              "en-gb", "recept2": "en-gb+f3", "transfer": "en-gb+f3", "nurse": "en-gb+f2",
              "patient3": "en-us", "recept3": "en-gb+f3", "announce": "en-gb-x-rp"}
    for name, text in LINES.items():
        p = folder / f"{name}.wav"
        if not p.exists():
            speak(text, p, voices.get(name, "en-gb"))
    d = {n: duration(folder / f"{n}.wav") for n in LINES}
    ann = d["announce"] + 0.3 + 0.5   # delay + margin before the caller speaks

    ev = []

    def say(at, line, name):
        ev.append({"at": round(at, 2), "line": line, "type": "audio", "file": f"{name}.wav"})
        return at + d[name] + 0.6

    # Line 0, call 1: inbound from a patient; pays by card with the pause button.
    ev += [{"at": 4.0, "line": 0, "type": "cli", "number": "01632960123", "name": "J SMITH"},
           {"at": 5.0, "line": 0, "type": "ring", "until": 20.0},
           {"at": 11.2, "line": 0, "type": "offhook"}]
    t = say(11.2 + ann, 0, "patient1")
    t = say(t, 0, "recept1")
    t = say(t, 0, "patient2")
    ev.append({"at": round(t, 2), "type": "button", "button": "pause", "hold": 0.15})
    t = say(t + 0.5, 0, "card")
    ev.append({"at": round(t + 0.5, 2), "type": "button", "button": "pause", "hold": 0.15})
    t = say(t + 1.0, 0, "recept3")
    ev.append({"at": round(t + 1.0, 2), "line": 0, "type": "onhook"})
    # Line 1: inbound while line 0 is busy.
    ev += [{"at": 30.0, "line": 1, "type": "cli", "number": "01632960321", "name": "A KHAN"},
           {"at": 31.0, "line": 1, "type": "ring", "until": 45.0},
           {"at": 37.4, "line": 1, "type": "offhook"}]
    t1 = say(37.4 + ann, 1, "patient3")
    t1 = say(t1, 1, "recept3")
    ev.append({"at": round(t1 + 0.8, 2), "line": 1, "type": "onhook"})
    # Line 0, call 2: outbound results call with a hook flash to transfer to the nurse.
    t = max(t + 20, 150.0)
    ev += [{"at": t, "line": 0, "type": "offhook"},
           {"at": t + 1.5, "line": 0, "type": "dtmf", "digits": "01632960456",
            "on_ms": 90, "off_ms": 90}]
    t2 = say(t + 1.5 + 11 * 0.18 + ann + 4.0, 0, "recept2")
    t2 = say(t2, 0, "transfer")
    ev.append({"at": round(t2, 2), "line": 0, "type": "flash", "duration": 0.12})
    t2 = say(t2 + 2.0, 0, "nurse")
    ev.append({"at": round(t2 + 0.5, 2), "line": 0, "type": "onhook"})
    # Line 1: a missed call, withheld number.
    tm = max(t1 + 30, 200.0)
    ev += [{"at": tm, "line": 1, "type": "cli", "absence": "withheld"},
           {"at": tm + 1.0, "line": 1, "type": "ring", "until": tm + 19.0}]
    # Line 1: inbound where the caller keys a digit mid-call (masked in the recording).
    ti = tm + 40
    ev += [{"at": ti, "line": 1, "type": "cli", "number": "01632960789"},
           {"at": ti + 1.0, "line": 1, "type": "ring", "until": ti + 20.0},
           {"at": ti + 4.3, "line": 1, "type": "offhook"}]
    t3 = say(ti + 4.3 + ann, 1, "patient1")
    ev.append({"at": round(t3, 2), "line": 1, "type": "dtmf", "digits": "1", "on_ms": 120,
               "off_ms": 80})
    t3 = say(t3 + 0.8, 1, "recept1")
    ev.append({"at": round(t3 + 0.5, 2), "line": 1, "type": "onhook"})
    total = max(t2, t3) + 10
    sc = {"rate": RATE, "start": "2026-11-25T08:30:00Z", "duration": round(total, 1),
          "lines": 2, "name": "a morning at reception", "events": ev}
    path = folder / "reception-morning.json"
    path.write_text(json.dumps(sc, indent=1) + "\n")
    return path, folder / "announce.wav"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="demo-out", help="folder for everything the demo makes")
    args = ap.parse_args(argv)
    from hw import scenario as scen
    from recorder import config
    from recorder.evidence import keys
    from recorder.evidence.export import export_calls
    from recorder.logsetup import setup_logging
    from recorder.runtime import simulate
    from recorder.storage.store import Store, device_key_for

    setup_logging(quiet=True)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    print(f"1. making the demo practice key and audio in {out}/")
    priv, pub = keys.practice_keygen(out / "practice.key")
    sc_path, ann = build(out / "scenario")
    sc = scen.load(sc_path)
    data = out / "box-data"
    cfg = simulate.sim_config(config.Config(), sc, str(data), str(pub), str(ann))
    cfg = cfg.replace(pause__button_lines=[0])   # the pause button sits at reception 1
    print(f"2. simulating '{sc_path.name}': {sc.duration:.0f} s of line time on "
          f"{sc.lines} lines")
    res = simulate.run(sc, cfg)
    st = res.status
    print(f"   {st['counts']['calls']} calls, {st['counts']['missed']} missed, "
          f"{st['writer']['segments']} encrypted segments, overruns "
          f"{st['overruns']['consumer']}")
    print("3. exporting with the practice key (verifying chains and signatures)")
    store = Store(data)
    done, failures = export_calls(store, keys.load_practice_private(priv), out / "export",
                                  device_key=device_key_for(data), data_dir=data)
    print(f"\n{'call':<29} {'line':>4} {'direction':<9} {'answered (UTC)':<20} "
          f"{'secs':>6} {'number':<13} {'pauses':>6} {'masked':>6} {'integrity':<9}")
    for row in store.calls():
        meta = {}
        j = out / "export" / f"{row.id}.json"
        if j.exists():
            meta = json.loads(j.read_text())
        when = (meta.get("offhook") or "")[11:19] if meta else "missed"
        number = row.party_masked or "-"
        dur = meta.get("duration_s")
        print(f"{row.id:<29} {row.line:>4} {row.direction:<9} "
              f"{when if row.state != 'missed' else 'missed':<20} "
              f"{dur if dur is not None else '-':>6} {number:<13} "
              f"{len(meta.get('pauses', [])):>6} {len(meta.get('masked_dtmf', [])):>6} "
              f"{meta.get('integrity', {}).get('status', '-'):<9}")
    print(f"\nWAV and JSON for each call are in {out / 'export'}/ ; the box's encrypted "
          f"store is in {data}/")
    print("4. syncing the box to the upstream (mosquitto, mutual TLS, one ingest worker)")
    up = demo_upstream.run(out, data)
    print(f"   {up['calls']} calls stored upstream; config {up['config']}")
    print(f"\nNext: make portal   (then open http://127.0.0.1:8080/)\n"
          f"   username: {up['manager']}   password: {up['password']}   "
          f"(also in {up['password_file']})\n"
          f"   practice key to open in the browser: {out / 'practice.key'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
