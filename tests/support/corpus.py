"""Talk-off corpus: synthetic speech (espeak-ng, many voices) and music-like tones, at 8 kHz.

Text comes from the docstrings of the Python standard library (deterministic, offline,
plenty of varied English). Each chunk is spoken by one (voice, words-per-minute, pitch)
setting in rotation, rendered by espeak-ng at its native 22.05 kHz and resampled to the target
rate by sox. Each utterance is scaled to a random speech level between -30 and -10 dBFS RMS.
One part in ten is music-like: two-voice note sequences with 3-8 harmonics and vibrato.

Used by tests/dsp/test_talkoff.py and bench/dsp.py. Files go into a caller-given cache dir
(a pytest session tmp dir, or a temporary directory), never into the working tree.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
import shutil
import subprocess
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

VOICES = (
    "en-gb",
    "en-us",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en+f3",
    "en+m7",
    "en-us+f2",
    "en-gb+f4",
    "en-029",
    "en-gb-x-gbclan",
    "en+m3",
    "en-us+f5",
)
SPEEDS = (120, 145, 170, 195, 220)  # words per minute
PITCHES = (20, 35, 50, 65, 80)  # espeak-ng pitch 0..99
CHUNK_CHARS = 900  # roughly one minute of speech per chunk


def tools_available() -> str | None:
    """None if espeak-ng and sox are on PATH, else the name of the missing tool."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            return tool
    return None


@functools.lru_cache(maxsize=1)
def _stdlib_text() -> tuple[str, ...]:
    """English sentences from stdlib docstrings, in a fixed order."""
    names = sorted(
        m.name
        for m in pkgutil.iter_modules()
        if m.name.isidentifier()
        and not m.name.startswith("_")
        and m.name
        in {
            "argparse", "asyncio", "calendar", "collections", "configparser", "csv", "datetime",
            "decimal", "difflib", "email", "enum", "fractions", "functools", "gettext", "heapq",
            "http", "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox", "pathlib",
            "pickle", "pydoc", "random", "shutil", "smtplib", "socket", "sqlite3", "statistics",
            "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "typing",
            "unittest", "urllib", "uuid", "xml", "zipfile", "zoneinfo", "ftplib", "optparse",
            "doctest", "pdb", "locale", "codecs", "selectors", "queue", "sched", "netrc",
        }
    )  # fmt: skip
    texts = []
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - a missing optional module just adds less text
            continue
        docs = [mod.__doc__ or ""]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated aliases (typing.re, ...) warn on access
            for attr in sorted(dir(mod)):
                obj = getattr(mod, attr, None)
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and getattr(obj, "__module__", None) == name:
                    docs.append(doc)
        texts.extend(docs)
    sentences: list[str] = []
    for doc in texts:
        for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc)):
            words = re.sub(r"[^A-Za-z0-9,;:'.!? -]", " ", s).split()
            if len(words) >= 4:
                sentences.append(" ".join(words))
    return tuple(dict.fromkeys(sentences))  # dedupe, keep order


def _chunks(n: int, seed: int) -> list[str]:
    sentences = _stdlib_text()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    out, cur = [], []
    i = 0
    while len(out) < n:
        cur.append(sentences[order[i % len(order)]])
        i += 1
        if sum(len(s) + 1 for s in cur) >= CHUNK_CHARS:
            out.append(" ".join(cur))
            cur = []
    return out


def _speak(text: str, voice: str, wpm: int, pitch: int, rate: int, path: Path) -> np.ndarray:
    if not path.exists():
        raw = path.with_suffix(".22k.wav")
        txt = path.with_suffix(".txt")
        txt.write_text(text, encoding="ascii")  # a file, so text can never look like an option
        subprocess.run(
            [
                "espeak-ng",
                "-v",
                voice,
                "-s",
                str(wpm),
                "-p",
                str(pitch),
                "-w",
                str(raw),
                "-f",
                str(txt),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["sox", str(raw), "-r", str(rate), "-b", "16", str(path)],
            check=True,
            capture_output=True,
        )
        raw.unlink()
        txt.unlink()
    x, _ = sf.read(path, dtype="float32")
    return x


def music(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Music-like material: two voices of equal-tempered notes with harmonics and vibrato."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * rate), dtype=np.float64)
    for _voice in range(2):
        pos = 0
        while pos < out.size:
            n = int(rng.uniform(0.1, 0.6) * rate)
            n = min(n, out.size - pos)
            f0 = 110.0 * 2.0 ** (int(rng.integers(0, 36)) / 12.0)
            t = np.arange(n) / rate
            vib = 1.0 + 0.005 * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
            phase = 2 * np.pi * np.cumsum(f0 * vib) / rate
            note = np.zeros(n)
            for k in range(1, int(rng.integers(3, 9)) + 1):
                if k * f0 < rate / 2 - 200:
                    note += np.sin(k * phase) / k
            env = np.minimum(1.0, t / 0.02) * np.exp(-t * rng.uniform(1.0, 6.0))
            out[pos : pos + n] += 0.1 * note * env
            pos += n
    return out.astype(np.float32)


def build(minutes: float, rate: int, cache: Path, seed: int = 1,
          parts: list | None = None) -> np.ndarray:
    """About ``minutes`` of talk-off material at ``rate`` Hz (float32), cached in ``cache``.

    ``parts``: if a list is given, ``("speech" | "music", start, end)`` sample ranges of
    the result are appended to it.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    n_chunks = max(1, int(round(minutes)))
    texts = _chunks(n_chunks, seed)
    rng = np.random.default_rng(seed)
    jobs = []
    for i, text in enumerate(texts):
        voice = VOICES[i % len(VOICES)]
        wpm = SPEEDS[(i // len(VOICES)) % len(SPEEDS)]
        pitch = PITCHES[(i * 7) % len(PITCHES)]
        path = cache / f"chunk{seed}_{i:04d}_{rate}.wav"
        jobs.append((text, voice, wpm, pitch, rate, path))
    with ThreadPoolExecutor(max_workers=4) as pool:
        speech = list(pool.map(lambda job: _speak(*job), jobs))
    pieces, kinds = [], []
    for i, x in enumerate(speech):
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) or 1.0
        level = 10 ** (rng.uniform(-30.0, -10.0) / 20.0)
        pieces.append((x * (level / rms)).astype(np.float32))
        kinds.append("speech")
        if i % 10 == 9:
            pieces.append(music(30.0, rate, seed * 1000 + i))
            kinds.append("music")
    if parts is not None:
        at = 0
        for kind, piece in zip(kinds, pieces, strict=True):
            parts.append((kind, at, at + piece.size))
            at += piece.size
    total = np.concatenate(pieces)
    return np.clip(total, -1.0, 1.0)
