"""Shared plumbing for the reliability campaigns (``bench/campaigns/*.py``).

Each campaign prints a summary table, ends with one JSON line of headline figures and
exits non-zero on any violation. This module holds what several of them need: a
loopback mosquitto with mutual TLS and the per-device ACL plus an ingest worker (the
same PKI and broker classes the sync tests use, from :mod:`tests.support.broker`), a
``linetap simulate`` subprocess (:mod:`tests.support.simbox`), scans of a data dir for
temp and plaintext files, and the table/JSON output.

Run every campaign as a module from the repository root (``python -m
bench.campaigns.powercut``), so ``bench`` and ``tests.support`` import without any
``sys.path`` changes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support import syncbox
from tests.support.broker import PKI, Broker
from tests.support.simbox import Box, new_box  # noqa: F401  (the campaigns call common.new_box)
from tests.support.syncbox import to_toml

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "lt-campaign01"
SITE = "site1"


# -- output ------------------------------------------------------------------------------------
_REPRO: dict = {"command": None}


def reproduce_command(argv: list[str], seed: int) -> str:
    """The command line that reruns this campaign exactly: ``argv`` (script and options,
    as given) with ``--seed`` set to ``seed``, run from the repository root."""
    import shlex
    script = Path(argv[0]).resolve()
    try:
        # Campaigns run as modules from the repository root (python -m bench.campaigns.X).
        run = ["-m", ".".join(script.relative_to(ROOT).with_suffix("").parts)]
    except ValueError:
        run = [str(script)]
    rest, skip = [], False
    for a in argv[1:]:
        if skip:
            skip = False
            continue
        if a == "--seed":
            skip = True
            continue
        if a.startswith("--seed="):
            continue
        rest.append(a)
    py = Path(sys.executable)
    try:
        py_s = str(py.relative_to(ROOT))
    except ValueError:
        py_s = str(py)
    return f"cd {shlex.quote(str(ROOT))} && " + shlex.join(
        [py_s, *run, *rest, "--seed", str(seed)])


def parse_args(doc: str, extra=None, argv: list[str] | None = None) -> argparse.Namespace:
    """Common options; picks a fresh seed if none is given and prints it, with the
    command that reproduces the run (printed again by :func:`finish` on a failure, and
    by an uncaught exception)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (under 3 minutes)")
    ap.add_argument("--seed", type=int, default=None,
                    help="random seed (default: a fresh random one, printed)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    if extra:
        extra(ap)
    argv = sys.argv if argv is None else argv
    args = ap.parse_args(argv[1:])
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 100000)
    _REPRO["command"] = reproduce_command(argv, args.seed)
    print(f"seed {args.seed}; reproduce with: {_REPRO['command']}", flush=True)
    previous = sys.excepthook

    def hook(tp, value, tb):
        previous(tp, value, tb)
        print(f"\nFAILED (uncaught {tp.__name__}); reproduce with: {_REPRO['command']}",
              file=sys.stderr, flush=True)
    sys.excepthook = hook
    return args


def table(title: str, rows: list[tuple], head: tuple = ("check", "value", "result")) -> None:
    """Print a plain text table (first column left-aligned)."""
    rows = [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(head)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def finish(summary: dict, violations: list[str], root: Path | None = None,
           keep: bool = False, kept: str = "") -> int:
    """Print violations and the JSON headline line; return the exit status. ``root``,
    the campaign's work folder, is removed unless ``keep`` or a violation asks to look
    at it (``kept`` says what else is in it)."""
    if root is not None:
        if keep or violations:
            print(f"work folder kept: {root}{kept}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if violations:
        print(f"\nVIOLATIONS ({len(violations)}):")
        for v in violations[:200]:
            print(f"  - {v}")
        if _REPRO["command"]:
            print(f"\nreproduce with: {_REPRO['command']}")
            summary["reproduce"] = _REPRO["command"]
    summary["violations"] = len(violations)
    print(json.dumps(summary, sort_keys=False))
    return 1 if violations else 0


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"linetap-{prefix}-"))


# -- data dir scans ----------------------------------------------------------------------------
def stale_temp_files(data: Path, live_pid: int | None = None) -> list[Path]:
    """Temp files not owned by the live process (their names carry the writer's pid)."""
    out = []
    for p in data.rglob("*.tmp"):
        if live_pid is not None and f".{live_pid}.tmp" in p.name:
            continue
        out.append(p)
    return out


def read_status(data: Path) -> dict | None:
    try:
        return json.loads((data / "run" / "status.json").read_text())
    except (OSError, ValueError):
        return None


def median(xs):
    xs = sorted(xs)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


# -- scenarios ---------------------------------------------------------------------------------
def day_scenario(rng: random.Random, start: str, duration: float, lines: int = 4,
                 min_gap=2.0, max_gap=40.0, min_call=8.0, max_call=150.0) -> tuple[dict, list]:
    """A busy scenario: calls on every line back to back. Returns (raw scenario, calls)
    where calls are ``(line, offhook_s, onhook_s or None)`` in line time."""
    events, calls = [], []
    for ln in range(lines):
        t = rng.uniform(0.5, 6.0)
        while t < duration - 3:
            inbound = rng.random() < 0.6
            if inbound:
                ring_end = min(t + rng.uniform(2.5, 6.0), duration - 2)
                events.append({"at": round(t, 3), "line": ln, "type": "ring",
                               "until": round(ring_end, 3)})
                t = ring_end + 0.2
            length = rng.uniform(min_call, max_call)
            off = round(t, 3)
            end = off + length
            events.append({"at": off, "line": ln, "type": "offhook"})
            events.append({"at": off, "line": ln, "type": "tone",
                           "hz": rng.choice([300, 440, 700, 1000, 1300]),
                           "duration": round(min(length, duration - off - 0.01), 3),
                           "level_dbfs": -14})
            if end < duration - 1:
                events.append({"at": round(end, 3), "line": ln, "type": "onhook"})
                calls.append((ln, off, round(end, 3)))
            else:
                calls.append((ln, off, None))
                break
            t = end + rng.uniform(min_gap, max_gap)
    raw = {"rate": 8000, "start": start, "duration": duration, "lines": lines,
           "events": events}
    return raw, calls


# -- the box under test ------------------------------------------------------------------------
def write_toml(path: Path, raw: dict) -> Path:
    path.write_text(to_toml(raw))
    return path


class SyncRig:
    """mosquitto (mutual TLS + ACL) on loopback and one ingest worker subprocess with a
    SQLite upstream, registered for one device whose identity is made here."""

    def __init__(self, root: Path, box: Box, device: str = DEVICE, host: str = "127.0.0.1"):
        from recorder.evidence import keys
        from recorder.evidence.keys import raw_public
        self.root, self.box, self.device = root, box, device
        (root / "pki").mkdir(parents=True, exist_ok=True)
        (root / "broker").mkdir(exist_ok=True)
        self.pki = PKI(root / "pki")
        self.dev = self.pki.client(device)
        self.pki.ingest = self.pki.client("ingest")
        self.broker = Broker(root / "broker", self.pki)
        box.data.mkdir(parents=True, exist_ok=True)
        ident = keys.ensure_identity(box.data, first_start=True)
        self.identity_hex = raw_public(ident.public_key()).hex()
        self.host = host
        self.ingest_proc = None

    def upstream_raw(self, broker_host="127.0.0.1") -> dict:
        return {"database": {"url": f"sqlite:///{self.root / 'upstream.db'}"},
                "objects": {"path": str(self.root / "objects")},
                "broker": {"host": broker_host, "port": self.broker.port,
                           "ca": str(self.pki.ca), "cert": self.pki.ingest.cert,
                           "key": self.pki.ingest.key},
                "commands": {"resend_s": 5},
                "retention": {"interval_s": 30},
                "sites": {SITE: {"retention_days": 90.0,
                                 "devices": {self.device: self.identity_hex}}}}

    def box_raw(self, **over) -> dict:
        raw = {"device": {"id": self.device, "site": SITE},
               "sync": {"enabled": True, "host": self.host, "port": self.broker.port,
                        "ca": str(self.pki.ca), "cert": self.dev.cert, "key": self.dev.key,
                        "health_interval_s": 5.0},
               "retention": {"interval_s": 5.0}}
        for k, v in over.items():
            sec, key = k.split("__", 1)
            raw.setdefault(sec, {})[key] = v
        return raw

    def start(self, ingest=True, ingest_prefix: list[str] | None = None) -> None:
        self.broker.start()
        self.box.config = write_toml(self.root / "box.toml", self.box_raw())
        self.up_conf = write_toml(self.root / "upstream.toml", self.upstream_raw())
        if ingest:
            self.start_ingest(ingest_prefix)

    def start_ingest(self, prefix: list[str] | None = None, conf: Path | None = None) -> None:
        self.ingest_log = open(self.root / "ingest.log", "ab")  # noqa: SIM115
        self.ingest_proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "sync.upstream.ingest", "--config",
             str(conf or self.up_conf)], cwd=str(ROOT), stdout=subprocess.DEVNULL,
            stderr=self.ingest_log)

    def stop(self) -> None:
        if self.ingest_proc and self.ingest_proc.poll() is None:
            self.ingest_proc.terminate()
            try:
                self.ingest_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.ingest_proc.kill()
                self.ingest_proc.wait()
        self.broker.stop()

    def upstream(self):
        """Open the upstream DB in this process (read-only use)."""
        from sync.upstream.config import from_dict
        from sync.upstream.store import open_db
        ucfg = from_dict(self.upstream_raw())
        open_db(ucfg.db_url)
        return ucfg


def unacked(data: Path) -> int:

    from recorder.storage.store import Store
    s = Store(data)
    try:
        return syncbox.unacked(s)
    finally:
        s.close()


def _segment_blobs(objects_path: str, device: str) -> list[str]:
    """Every segment blob the upstream's object store holds for ``device`` (keys)."""
    from sync.upstream.objectstore import open_objects
    return [k for k, _t in open_objects(objects_path).walk(f"seg/{device}")
            if not k.rsplit("/", 1)[-1].startswith(".")]


def compare_upstream(rig: SyncRig, data: Path) -> dict:
    """Box segments and manifests vs upstream rows: lost, duplicated, mismatched."""
    from recorder.storage.store import Store
    from sync.upstream.store import Problem, UCall, USegment
    rig.upstream()
    s = Store(data)
    try:
        box_segs = {}
        for r in s.m.Segment.select():
            box_segs[(r.call_id if hasattr(r, "call_id") else r.call, r.seq)] = r.sha256
        box_mans = {c.id: c.manifest_sha256 for c in s.calls()
                    if c.manifest and c.state != "deleted"}
    finally:
        s.close()
    up_segs: dict = {}
    dup = 0
    for r in USegment.select().where(USegment.device == rig.device):
        k = (r.call, r.seq)
        if k in up_segs:
            dup += 1
        up_segs[k] = getattr(r, "sha256", None)
    # The rows cannot hold a duplicate (a unique index forbids it), so count the object
    # store's files too: two blobs for one (call, seq) is a segment stored twice.
    blobs: dict = {}
    for key in _segment_blobs(rig.upstream_raw()["objects"]["path"], rig.device):
        call, _, name = key.rpartition("/")
        seq = name.split(".", 1)[0]
        if seq.isdigit():
            blobs.setdefault((call.rpartition("/")[2], int(seq)), []).append(key)
    dup += sum(len(v) - 1 for v in blobs.values())
    lost_blobs = [k for k in up_segs if k not in blobs]
    lost = [k for k in box_segs if k not in up_segs]
    mism = [k for k, v in box_segs.items() if k in up_segs and up_segs[k] not in (None, v)]
    extra = [k for k in up_segs if k not in box_segs]
    up_calls = {r.call: r for r in UCall.select().where(UCall.device == rig.device)}
    man_lost = [c for c in box_mans if c not in up_calls or not up_calls[c].manifest_key]
    problems = Problem.select().where(Problem.device == rig.device).count()
    lost += [k for k in lost_blobs if k in box_segs and k not in lost]   # row, no blob
    return {"box_segments": len(box_segs), "upstream_segments": len(up_segs),
            "upstream_blobs": sum(len(v) for v in blobs.values()),
            "lost": lost, "duplicated": dup, "mismatched": mism, "extra_upstream": extra,
            "manifests": len(box_mans), "manifests_lost": man_lost, "problems": problems}


def wait_drained(box: Box, timeout: float = 150.0) -> tuple[bool, float]:
    """Wait until the box has nothing unacked (while it runs); (drained, seconds)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and box.proc.poll() is None:
        if unacked(box.data) == 0:
            return True, time.monotonic() - t0
        time.sleep(0.5)
    return False, time.monotonic() - t0


def check_upstream(rig: SyncRig, data: Path, violations: list[str]) -> dict:
    """Compare box and upstream and record every loss, duplicate or problem."""
    time.sleep(1.0)   # let the ingest worker finish its last batch
    cmp = compare_upstream(rig, data)
    if cmp["lost"]:
        violations.append(f"{len(cmp['lost'])} segment(s) lost upstream, e.g. "
                          f"{cmp['lost'][:3]}")
    if cmp["duplicated"] or cmp["mismatched"] or cmp["problems"]:
        violations.append(f"upstream duplicates {cmp['duplicated']}, mismatched "
                          f"{len(cmp['mismatched'])}, problems {cmp['problems']}")
    if cmp["manifests_lost"]:
        violations.append(f"{len(cmp['manifests_lost'])} manifest(s) missing "
                          f"upstream, e.g. {cmp['manifests_lost'][:3]}")
    return cmp
