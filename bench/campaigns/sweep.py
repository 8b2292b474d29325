"""Seed sweep: the QUICK power-cut and full-disk campaigns on N fresh random seeds.

A campaign is only as good as the seeds it has been run on. For each of ``--n`` fresh
seeds (or the ones given with ``--seeds``), runs ``python -m bench.campaigns.powercut
--quick --seed S`` and the same for ``diskfull``, one after the other, each in its own
process, prints the seed, the result and the elapsed time of each, stops at the first violation
(exit 1) with the command that reproduces it. The full-disk campaign needs root (it
skips without, and says so). ``make campaign-sweep [N=10]``.

``--report LOGS`` prints, from a sweep's log folder (finished or still running), one
Markdown table row per seed with each run's headline figures, in the order run.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ("powercut", "diskfull")


def run_one(name: str, seed: int, extra: list[str], log_dir: Path) -> dict:
    """Run one campaign; returns its JSON headline (or a synthetic one on a crash)."""
    cmd = [sys.executable, "-m", f"bench.campaigns.{name}", "--quick",
           "--seed", str(seed), *extra]
    log = log_dir / f"{name}-{seed}.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:
        rc = subprocess.run(cmd, cwd=str(ROOT), stdout=out, stderr=subprocess.STDOUT).returncode
    elapsed = time.monotonic() - t0
    head = None
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"campaign"' in line:
            try:
                head = json.loads(line)
            except ValueError:
                continue
            break
    if head is None:
        head = {"campaign": name, "seed": seed, "violations": None}
    head["rc"], head["log"], head["wall_s"] = rc, str(log), round(elapsed, 1)
    head["command"] = (f"cd {shlex.quote(str(ROOT))} && .venv/bin/python -m "
                       f"bench.campaigns.{name} --quick --seed {seed}"
                       + ("" if not extra else " " + shlex.join(extra)))
    return head


def headline(log: Path) -> dict | None:
    """The JSON line a campaign printed last, or None (still running, or it crashed)."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{") and '"campaign"' in line:
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def report(log_dir: Path) -> list[str]:
    """Markdown rows, one per seed in the order run: power cut (loss max, lag at the kill
    max, durability loss max, losses over the lag ceiling, violations, s) and full disk
    (ENOSPC met (writes refused), reserve released, start on a full disk completed,
    violations, s); "running" or "-" where a run has not ended or not started."""
    seeds: dict[int, None] = {}
    for log in sorted(log_dir.glob("*-*.log"), key=lambda p: p.stat().st_mtime):
        seeds.setdefault(int(log.stem.rsplit("-", 1)[1]), None)
    rows = []
    for seed in seeds:
        cells = [str(seed)]
        pc = log_dir / f"powercut-{seed}.log"
        h = headline(pc) if pc.exists() else None
        if h:
            cells += [str(h.get(k)) for k in ("loss_max_s", "starved_at_kill_max_s",
                                               "durability_loss_max_s",
                                               "losses_over_lag_ceiling", "violations",
                                               "elapsed_s")]
        else:
            cells += ["running" if pc.exists() else "-"] + [""] * 5
        df = log_dir / f"diskfull-{seed}.log"
        h = headline(df) if df.exists() else None
        if h:
            text = df.read_text(errors="replace")
            refused = re.search(r"writes refused\)\s+\S+ \((\d+)\)", text)
            released = re.search(r"reserve released \(times\)\s+(\d+)", text)
            cells += [f"{h.get('enospc_hit')} ({refused.group(1) if refused else '?'})",
                      released.group(1) if released else "?",
                      str(h.get("start_on_full_disk_ok")), str(h.get("violations")),
                      str(h.get("elapsed_s"))]
        else:
            cells += ["running" if df.exists() else "-"] + [""] * 4
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="fresh random seeds (default 10)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds instead of fresh ones")
    ap.add_argument("--campaigns", default=",".join(CAMPAIGNS),
                    help=f"which, in order (default {','.join(CAMPAIGNS)})")
    ap.add_argument("--logs", default=None, help="folder for each run's output "
                    "(default: a new temp folder, printed)")
    ap.add_argument("--report", default=None, metavar="LOGS",
                    help="print a table of the runs in a sweep's log folder and exit")
    a = ap.parse_args(argv)
    if a.report:
        print("| seed | power cut: loss max (s) | lag at the kill max (s) | durability "
              "loss max (s) | over the lag ceiling | violations | s | full disk: ENOSPC "
              "met (writes refused) | reserve released | start on a full disk | "
              "violations | s |")
        print("|" + "---|" * 12)
        print("\n".join(report(Path(a.report))))
        return 0
    if a.seeds:
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--seeds must be integers separated by commas, not {a.seeds!r}")
    else:
        if a.n < 1:
            ap.error(f"--n must be at least 1, not {a.n}")
        rng = random.SystemRandom()
        seeds = [rng.randrange(1, 100000) for _ in range(a.n)]
    names = [c for c in a.campaigns.split(",") if c]
    bad = [c for c in names if c not in CAMPAIGNS]
    if bad:
        ap.error(f"unknown campaign(s) {bad}; choose from {list(CAMPAIGNS)}")
    import tempfile
    log_dir = Path(a.logs) if a.logs else Path(tempfile.mkdtemp(prefix="linetap-sweep-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"sweep: {len(seeds)} seed(s) {seeds}, campaigns {names}, logs in {log_dir}",
          flush=True)
    results = []
    t0 = time.monotonic()
    for i, seed in enumerate(seeds, 1):
        for name in names:
            r = run_one(name, seed, [], log_dir)
            results.append(r)
            skipped = r.get("skipped")
            ok = r["rc"] == 0 and r.get("violations") == 0
            verdict = "skipped: " + skipped if skipped else ("ok" if ok else "FAIL")
            print(f"[{i}/{len(seeds)}] seed {seed} {name:9s} {verdict:7s} "
                  f"violations {r.get('violations')} rc {r['rc']} {r['wall_s']} s",
                  flush=True)
            if not ok:
                print(f"\nFIRST VIOLATION at seed {seed} ({name}); output: {r['log']}")
                print(f"reproduce with: {r['command']}")
                print(json.dumps({"sweep": "fail", "seeds": seeds[:i], "failed": name,
                                  "seed": seed, "elapsed_s": round(time.monotonic() - t0, 1)}))
                return 1
    print(json.dumps({"sweep": "ok", "seeds": seeds, "campaigns": names,
                      "runs": len(results), "elapsed_s": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
