"""Scenario files for the simulated line: parse, validate, and explain every problem.

The format (a contract that demos, benches and campaigns rely on)::

    {"rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": 60.0, "lines": 2,
     "events": [{"at": 7.3, "line": 0, "type": "offhook"}, ...]}

``at`` is seconds of line time from ``start``. Event types and their keys are listed in
:data:`EVENT_KEYS`; every unknown key, wrong type, out-of-range time, impossible hook
sequence and unreadable audio file is reported together in one
:class:`~recorder.errors.ScenarioError`.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hw.errors import ScenarioError

MAX_DURATION_S = 7 * 86400.0
TOP_KEYS = {"rate": int, "start": str, "duration": (int, float), "lines": int,
            "events": list, "noise_dbfs": (int, float), "name": str}
REQUIRED_TOP = ("rate", "start", "duration", "lines", "events")

# type -> {key: (python types, required)}; "at" and "type" are common to all events.
_NUM = (int, float)
EVENT_KEYS: dict[str, dict[str, tuple]] = {
    "cli": {"line": (int, True), "number": (str, False), "name": (str, False),
            "absence": (str, False), "standard": (str, False), "datetime": (str, False),
            "level_dbfs": (_NUM, False)},
    "ring": {"line": (int, True), "until": (_NUM, True)},
    "offhook": {"line": (int, True)},
    "onhook": {"line": (int, True)},
    "flash": {"line": (int, True), "duration": (_NUM, False)},
    "audio": {"line": (int, True), "file": (str, True), "gain_db": (_NUM, False)},
    "tone": {"line": (int, True), "hz": ((*_NUM, list), True), "duration": (_NUM, True),
             "level_dbfs": (_NUM, False)},
    "dtmf": {"line": (int, True), "digits": (str, True), "on_ms": (_NUM, False),
             "off_ms": (_NUM, False), "level_dbfs": (_NUM, False)},
    "button": {"button": (str, True), "hold": (_NUM, False)},
}
DTMF_DIGITS = set("0123456789*#ABCD")
CLI_STANDARDS = ("uk", "etsi_dtmf", "bell202")
ABSENCE = ("withheld", "unavailable")


@dataclass(frozen=True)
class Event:
    at: float
    type: str
    line: int | None
    args: dict = field(default_factory=dict)
    index: int = 0          # position in the file, for messages

    def sample(self, rate: int) -> int:
        return int(round(self.at * rate))


@dataclass(frozen=True)
class Scenario:
    rate: int
    start: datetime
    duration: float
    lines: int
    events: tuple[Event, ...]
    audio: dict = field(default_factory=dict)   # resolved path -> float32 mono array
    noise_dbfs: float | None = None
    path: Path | None = None

    @property
    def total_frames(self) -> int:
        return int(round(self.duration * self.rate))


def _typename(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_typename(x) for x in t)
    return {int: "integer", float: "number", str: "string", list: "list"}.get(t, t.__name__)


def _is(value, types) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _suggest(name, options) -> str:
    m = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{m[0]}'?)" if m else ""


def _parse_time(s: str) -> datetime:
    dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError("has no time zone (add 'Z' for UTC)")
    return dt.astimezone(UTC)


def load(path: str | os.PathLike) -> Scenario:
    """Read and validate a scenario file; audio paths are relative to the file."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScenarioError([f"file not found: {path}"], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"cannot read: {exc}"], str(path)) from exc
    except json.JSONDecodeError as exc:
        raise ScenarioError([f"not valid JSON: {exc.msg} at line {exc.lineno} column "
                             f"{exc.colno}"], str(path)) from exc
    except RecursionError:
        raise ScenarioError(["JSON is nested too deeply"], str(path)) from None
    return from_dict(raw, base=path.parent, source=str(path))


def from_dict(raw, base: str | os.PathLike = ".", source: str = "scenario") -> Scenario:
    """Validate parsed JSON. Raises :class:`ScenarioError` naming every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ScenarioError(["the top level must be a JSON object"], source)
    for k in raw:
        if k not in TOP_KEYS:
            problems.append(f"unknown top-level key '{k}'{_suggest(k, TOP_KEYS)}")
    for k in REQUIRED_TOP:
        if k not in raw:
            problems.append(f"missing required key '{k}'")
    for k, t in TOP_KEYS.items():
        if k in raw and not _is(raw[k], t):
            problems.append(f"'{k}' must be {_typename(t)}, got {type(raw[k]).__name__}")
    if problems:
        raise ScenarioError(problems, source)

    rate, lines, duration = raw["rate"], raw["lines"], float(raw["duration"])
    if rate not in (8000, 16000):
        problems.append(f"'rate' must be 8000 or 16000, got {rate}")
    if not 1 <= lines <= 4:
        problems.append(f"'lines' must be 1 to 4, got {lines}")
    if not 0 < duration <= MAX_DURATION_S:
        problems.append(f"'duration' must be above 0 and at most {MAX_DURATION_S:.0f} s")
    try:
        start = _parse_time(raw["start"])
    except ValueError as exc:
        problems.append(f"'start' {raw['start']!r} is not an ISO 8601 time: {exc}")
        start = datetime(1970, 1, 1, tzinfo=UTC)

    events: list[Event] = []
    audio: dict = {}
    base = Path(base)
    for i, ev in enumerate(raw["events"]):
        where = f"event {i}"
        if not isinstance(ev, dict):
            problems.append(f"{where}: must be an object, got {type(ev).__name__}")
            continue
        typ = ev.get("type")
        if not isinstance(typ, str) or typ not in EVENT_KEYS:
            problems.append(f"{where}: unknown type {typ!r}"
                            f"{_suggest(str(typ), EVENT_KEYS)}; known: "
                            f"{', '.join(sorted(EVENT_KEYS))}")
            continue
        where = f"event {i} ({typ})"
        spec = EVENT_KEYS[typ]
        ok = True
        at = ev.get("at")
        if not _is(at, _NUM):
            problems.append(f"{where}: 'at' must be a number of seconds, got {at!r}")
            ok = False
        elif not 0 <= at < duration:
            problems.append(f"{where}: 'at' = {at} is outside the scenario (0 to {duration} s)")
            ok = False
        for k, v in ev.items():
            if k in ("at", "type"):
                continue
            if k not in spec:
                problems.append(f"{where}: unknown key '{k}'{_suggest(k, spec)}")
                ok = False
            elif not _is(v, spec[k][0]):
                problems.append(f"{where}: '{k}' must be {_typename(spec[k][0])}, "
                                f"got {type(v).__name__} {v!r}")
                ok = False
        for k, (_t, req) in spec.items():
            if req and k not in ev:
                problems.append(f"{where}: missing required key '{k}'")
                ok = False
        if not ok:
            continue
        line = ev.get("line")
        if line is not None and not 0 <= line < lines:
            problems.append(f"{where}: line {line} does not exist (lines = {lines})")
            continue
        args = {k: v for k, v in ev.items() if k not in ("at", "type", "line")}
        ok = _check_event(typ, at, args, where, duration, base, rate, audio, problems)
        if ok:
            events.append(Event(float(at), typ, line, args, i))

    events.sort(key=lambda e: (e.at, e.index))
    _check_hook_sequence(events, problems)
    if problems:
        raise ScenarioError(problems, source)
    return Scenario(rate, start, duration, lines, tuple(events), audio,
                    raw.get("noise_dbfs"), Path(source) if source != "scenario" else None)


def _check_event(typ, at, args, where, duration, base, rate, audio, problems) -> bool:
    n0 = len(problems)
    if typ == "ring" and not at < args["until"] <= duration:
        problems.append(f"{where}: 'until' = {args['until']} must be after 'at' and within "
                        "the scenario")
    elif typ == "dtmf":
        bad = set(args["digits"].upper()) - DTMF_DIGITS
        if not args["digits"] or bad:
            problems.append(f"{where}: 'digits' must be made of 0-9 * # A-D, got "
                            f"{args['digits']!r}")
        for k in ("on_ms", "off_ms"):
            if k in args and not 10 <= args[k] <= 5000:
                problems.append(f"{where}: '{k}' = {args[k]} must be 10 to 5000 ms")
    elif typ == "button":
        if args["button"] != "pause":
            problems.append(f"{where}: unknown button {args['button']!r} (the box has "
                            "'pause')")
        if "hold" in args and not 0.01 <= args["hold"] <= 60:
            problems.append(f"{where}: 'hold' = {args['hold']} must be 0.01 to 60 s")
    elif typ == "flash" and "duration" in args and not 0.01 <= args["duration"] <= 5:
        problems.append(f"{where}: 'duration' must be 0.01 to 5 s")
    elif typ == "cli":
        if args.get("standard", "uk") not in CLI_STANDARDS:
            problems.append(f"{where}: 'standard' must be one of {', '.join(CLI_STANDARDS)}")
        if "absence" in args and args["absence"] not in ABSENCE:
            problems.append(f"{where}: 'absence' must be one of {', '.join(ABSENCE)}")
        num = args.get("number")
        if num is not None and not (num and all(c.isdigit() or c == "+" for c in num)
                                    and len(num) <= 20):
            problems.append(f"{where}: 'number' must be up to 20 digits")
        if num is None and "absence" not in args:
            problems.append(f"{where}: give 'number' or 'absence'")
    elif typ == "tone":
        hz = args["hz"] if isinstance(args["hz"], list) else [args["hz"]]
        if not hz or not all(_is(h, _NUM) and 20 <= h < rate / 2 for h in hz):
            problems.append(f"{where}: 'hz' must be frequencies between 20 Hz and "
                            f"{rate // 2} Hz")
        if not 0 < args["duration"] <= MAX_DURATION_S:
            problems.append(f"{where}: 'duration' must be above 0 s (audio past the end "
                            "of the scenario is cut off)")
    elif typ == "audio":
        p = (base / args["file"]).resolve()
        args["path"] = str(p)
        if str(p) not in audio:
            try:
                audio[str(p)] = _load_wav(p, rate)
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
    return len(problems) == n0


def _load_wav(path: Path, rate: int) -> np.ndarray:
    import soundfile as sf
    if not path.is_file():
        raise ValueError(f"audio file not found: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"audio file {path} is not a readable WAV: {exc}") from exc
    if data.shape[1] != 1:
        raise ValueError(f"audio file {path} has {data.shape[1]} channels; it must be mono")
    if sr != rate:
        raise ValueError(f"audio file {path} is {sr} Hz; the scenario rate is {rate} Hz")
    return data[:, 0].copy()


def _check_hook_sequence(events: list[Event], problems: list[str]) -> None:
    """Off-hook on a line already off-hook (and the reverse) is a scenario mistake."""
    off: dict[int, float] = {}
    for e in events:
        if e.type == "offhook":
            if e.line in off:
                problems.append(f"event {e.index} (offhook): line {e.line} is already "
                                f"off-hook since {off[e.line]} s")
            off[e.line] = e.at
        elif e.type == "onhook":
            if e.line not in off:
                problems.append(f"event {e.index} (onhook): line {e.line} is not off-hook")
            off.pop(e.line, None)
        elif e.type == "flash" and e.line not in off:
            problems.append(f"event {e.index} (flash): line {e.line} is not off-hook")
