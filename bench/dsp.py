"""Benchmark the DSP detectors against a raw FFT of the same audio, plus talk-off and CLI rate.

Usage::

    .venv/bin/python -m bench.dsp [--minutes 10] [--talkoff-minutes 60] [--frames 1000] [--repeat 5]

Audio: ``--minutes`` of 8 kHz synthetic speech (espeak-ng via tests/support/corpus.py) with a
burst of DTMF digits every 20 s and a UK caller ID burst every minute. Each figure is the best
of ``--repeat`` runs, measured side by side in the same process:

* ``dtmf``: :func:`recorder.calls.dsp.dtmf.detect` over the whole audio;
* ``dtmf_stream``: :class:`~recorder.calls.dsp.dtmf.DtmfDetector` fed 20 ms blocks, as the
  daemon does;
* ``callerid``: :func:`recorder.calls.dsp.callerid.decode` over the whole audio (it stops at the
  first message, so it is run on the audio with the caller ID bursts removed: the worst case);
* ``fft``: ``np.fft.rfft`` over the same audio cut into 20 ms frames (the baseline).

Masking (:mod:`recorder.calls.dsp.dtmf_mask`, what the call processor blanks): 400 digits of
70 ms (200 ms apart) over speech at 6, 10 and 20 dB DTMF-to-speech, counted as masked
when every sample of the tone lies in a span widened by the processor's 30 ms guard; and
the share of the talk-off corpus blanked by false masks, for its speech and its music
parts separately.

The last line printed is one JSON object; ``ratio`` is dtmf x-real-time over fft x-real-time
(above 1 means the DTMF detector is cheaper than merely taking an FFT of every 20 ms frame).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hw import linesignals as gen
from recorder.calls.dsp import callerid, dtmf, dtmf_mask
from tests.support import corpus

RATE = 8000
MASK_GUARD_S = 0.03   # recorder.calls.MASK_GUARD_S: the processor widens each span by this


def best_of(repeat: int, fn) -> tuple[float, object]:
    """Smallest wall time (s) of ``repeat`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def build_audio(minutes: float, cache: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Speech + digits (+ CLI bursts); also the same audio without CLI, and the digits sent."""
    speech = corpus.build(minutes, RATE, cache, seed=7)[: int(minutes * 60 * RATE)]
    rng = np.random.default_rng(3)
    rms = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    speech = speech * (10 ** (-30 / 20) / rms)
    with_digits = speech.copy()
    sent = ""
    for at in range(5 * RATE, with_digits.size - 5 * RATE, 20 * RATE):
        syms = "".join(rng.choice(list("0123456789*#"), 4))
        burst = gen.dtmf(syms, RATE, level_dbfs=-12.0)
        with_digits[at : at + burst.size] += burst
        sent += syms
    with_cli = with_digits.copy()
    for at in range(15 * RATE, with_cli.size - 5 * RATE, 60 * RATE):
        clip = gen.uk_clip("01632960123", "J SMITH", None, RATE)
        with_cli[at : at + clip.size] = clip
    return with_cli, with_digits, sent


def double_talk(speech: np.ndarray, ratio_db: float, n: int = 400) -> tuple[int, int]:
    """Digits (60 ms on/off) mixed over speech at ``ratio_db`` DTMF power over speech RMS.

    Returns (digits found in order, digits sent). The stretch of speech used is scaled to
    -30 dBFS RMS (its pauses included), so the ratio is to the average speech level.
    """
    rng = np.random.default_rng(int(ratio_db))
    syms = "".join(rng.choice(list("0123456789*#ABCD"), n))
    level = -30.0 + ratio_db - 3.0  # per tone; two tones add 3 dB
    digits = gen.dtmf(syms, RATE, on_ms=60, off_ms=60, level_dbfs=level)
    part = speech[: digits.size].astype(np.float64)
    part *= 10 ** (-30 / 20) / np.sqrt(np.mean(part**2))
    x = (part + digits).astype(np.float32)
    got = "".join(d for d, _, _ in dtmf.detect(x, RATE))
    # longest common subsequence: found digits in the right order
    prev = [0] * (len(got) + 1)
    for a in syms:
        cur = [0]
        for j, b in enumerate(got):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1], n


def _blanked(spans, n: int) -> np.ndarray:
    """Samples the processor would blank for mask ``spans`` (seconds), as a bool array."""
    m = np.zeros(n, bool)
    g = int(MASK_GUARD_S * RATE)
    for a, b in spans:
        m[max(0, int(a * RATE) - g):int(b * RATE) + g] = True
    return m


def mask_double_talk(speech: np.ndarray, ratio_db: float, n: int = 400) -> tuple[int, int]:
    """Digits of 70 ms (200 ms apart) over speech at ``ratio_db`` DTMF power over speech
    RMS: (digits wholly masked, digits sent)."""
    rng = np.random.default_rng(int(ratio_db) + 100)
    syms = "".join(rng.choice(list("0123456789*#ABCD"), n))
    digits = gen.dtmf(syms, RATE, on_ms=70, off_ms=200, level_dbfs=-30.0 + ratio_db - 3.0)
    part = speech[: digits.size].astype(np.float64)
    part *= 10 ** (-30 / 20) / np.sqrt(np.mean(part**2))
    x = (part + digits).astype(np.float32)
    m = _blanked(dtmf_mask.mask_spans(x, RATE), x.size)
    per, on = 270 * RATE // 1000, 70 * RATE // 1000
    return sum(bool(m[i * per:i * per + on].all()) for i in range(n)), n


def cli_rate(frames: int) -> float:
    """Share of random UK CLIP frames decoded at 20 dB S/N and +-1 % offset (8 kHz)."""
    rng = np.random.default_rng(20261125)
    ok = 0
    for i in range(frames):
        number = "0" + "".join(rng.choice(list("0123456789"), 10))
        level = float(rng.uniform(-36.0, -6.0))
        offset = float(rng.choice([-0.01, 0.01]))
        x = gen.uk_clip(number, "J SMITH", "11250905", RATE, level_dbfs=level, freq_offset=offset)
        sigma = np.sqrt(0.5 * 10 ** (level / 10) / 100.0)
        x = x + np.random.default_rng(i).normal(0, sigma, x.size).astype(np.float32)
        r = callerid.decode(x, RATE)
        ok += r is not None and r["number"] == number and r["name"] == "J SMITH"
    return ok / frames


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--talkoff-minutes", type=float, default=60.0)
    ap.add_argument("--frames", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    missing = corpus.tools_available()
    if missing:
        print(f"bench.dsp needs {missing} (apt-get install espeak-ng sox)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="linetap-dsp-bench-") as tmp:
        cache = Path(tmp)
        audio, no_cli, sent = build_audio(args.minutes, cache)
        seconds = audio.size / RATE
        usable = audio[: audio.size // 160 * 160].reshape(-1, 160)

        t_fft, _ = best_of(args.repeat, lambda: np.fft.rfft(usable, axis=1))
        t_dtmf, found = best_of(args.repeat, lambda: dtmf.detect(no_cli, RATE))

        def stream():
            det = dtmf.DtmfDetector(RATE)
            out = []
            for i in range(0, no_cli.size, 160):
                out += det.feed(no_cli[i : i + 160])
            return out + det.flush()

        t_stream, streamed = best_of(args.repeat, stream)

        def mask_stream():
            m = dtmf_mask.DtmfMasker(RATE)
            out = []
            for i in range(0, no_cli.size, 160):
                out += m.feed(no_cli[i : i + 160])
            return out + m.flush()

        t_mask_stream, _ = best_of(args.repeat, mask_stream)
        t_cli, cli = best_of(args.repeat, lambda: callerid.decode(no_cli, RATE))
        t_cli_hit, cli_hit = best_of(args.repeat, lambda: callerid.decode(audio, RATE))

        got = "".join(d for d, _, _ in found)
        assert "".join(d for d, _, _ in streamed) == got, "streaming differs from batch"

        speech = corpus.build(10, RATE, cache, seed=5)
        dt_rows = {r: double_talk(speech, r) for r in (10.0, 15.0, 20.0)}
        mask_rows = {r: mask_double_talk(speech, r) for r in (6.0, 10.0, 20.0)}
        parts: list = []
        talk = corpus.build(args.talkoff_minutes, RATE, cache, seed=1, parts=parts)
        t_talk, false_digits = best_of(1, lambda: dtmf.detect(talk, RATE))
        t_mask, spans = best_of(1, lambda: dtmf_mask.mask_spans(talk, RATE))
        blank = _blanked(spans, talk.size)
        false_blank = {}
        for kind in ("speech", "music"):
            sel = [blank[a:b] for k, a, b in parts if k == kind]
            false_blank[kind] = sum(int(x.sum()) for x in sel) / max(1, sum(x.size for x in sel))
        talk_hours = talk.size / RATE / 3600
        rate_ok = cli_rate(args.frames) if args.frames else None

    xrt = {
        "fft": seconds / t_fft,
        "dtmf": seconds / t_dtmf,
        "dtmf_stream": seconds / t_stream,
        "callerid": seconds / t_cli,
        "mask_stream": seconds / t_mask_stream,
    }
    print(f"audio: {seconds / 60:.1f} min at {RATE} Hz, speech at -30 dBFS RMS + digits")
    print(f"{'what':<34}{'time s':>10}{'x realtime':>14}{'vs fft':>10}")
    rows = [
        ("np.fft.rfft, 20 ms frames (base)", t_fft, "fft"),
        ("dtmf.detect (batch)", t_dtmf, "dtmf"),
        ("DtmfDetector.feed, 20 ms blocks", t_stream, "dtmf_stream"),
        ("callerid.decode (no CLI present)", t_cli, "callerid"),
        ("DtmfMasker.feed, 20 ms blocks", t_mask_stream, "mask_stream"),
    ]
    for label, t, key in rows:
        print(f"{label:<34}{t:>10.3f}{xrt[key]:>14.0f}{xrt[key] / xrt['fft']:>10.2f}")
    print(
        f"callerid.decode (CLI at 15 s): {t_cli_hit * 1000:.1f} ms, number ok: "
        f"{cli_hit is not None and cli_hit['number'] == '01632960123'}"
    )
    print(f"digits sent {len(sent)}, found {len(got)}, exact: {got == sent}; stray CLI: {cli}")
    print(
        f"talk-off: {talk_hours:.2f} h of speech+music, {len(false_digits)} false digits "
        f"({t_talk:.1f} s)"
    )
    if rate_ok is not None:
        print(
            f"caller ID: {rate_ok * 100:.1f} % of {args.frames} frames at 20 dB S/N, +-1 % offset"
        )
    for r, (found_n, sent_n) in dt_rows.items():
        print(f"double talk: digits {r:.0f} dB over speech RMS: {found_n}/{sent_n} found")
    for r, (masked_n, sent_n) in mask_rows.items():
        print(f"masking: 70 ms digits {r:.0f} dB over speech RMS: {masked_n}/{sent_n} masked")
    print(f"masking talk-off: {len(spans)} false spans blank {false_blank['speech'] * 100:.2f} % "
          f"of speech time and {false_blank['music'] * 100:.1f} % of music time "
          f"({talk.size / RATE / t_mask:.0f}x real time)")
    headline = {
        "bench": "dsp",
        "dtmf_x_realtime": round(xrt["dtmf"]),
        "dtmf_stream_x_realtime": round(xrt["dtmf_stream"]),
        "callerid_x_realtime": round(xrt["callerid"]),
        "fft_x_realtime": round(xrt["fft"]),
        "ratio": round(xrt["dtmf"] / xrt["fft"], 3),
        "callerid_ratio": round(xrt["callerid"] / xrt["fft"], 3),
        "talkoff_hours": round(talk_hours, 2),
        "talkoff_false_digits": len(false_digits),
        "cli_decode_rate": None if rate_ok is None else round(rate_ok, 4),
        "double_talk_15db": round(dt_rows[15.0][0] / dt_rows[15.0][1], 4),
        "mask_6db": round(mask_rows[6.0][0] / mask_rows[6.0][1], 4),
        "mask_10db": round(mask_rows[10.0][0] / mask_rows[10.0][1], 4),
        "mask_20db": round(mask_rows[20.0][0] / mask_rows[20.0][1], 4),
        "mask_false_speech": round(false_blank["speech"], 5),
        "mask_false_music": round(false_blank["music"], 4),
        "mask_x_realtime": round(talk.size / RATE / t_mask),
        "mask_stream_x_realtime": round(xrt["mask_stream"]),
    }
    print(json.dumps(headline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
