"""Seed sweep: the QUICK power-cut and full-disk campaigns on N fresh random seeds.

A campaign is only as good as the seeds it has been run on. For each of ``--n`` fresh
seeds (or the ones given with ``--seeds``), runs ``python -m bench.campaigns.powercut
--quick --seed S`` and the same for ``diskfull``, one after the other, each in its own
process, prints the seed, the result and the elapsed time of each, stops at the first violation
(exit 1) with the command that reproduces it. The full-disk campaign needs root (it
skips without, and says so). ``make campaign-sweep [N=10]``.
"""

from __future__ import annotations

import argparse
import json
import random
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10, help="fresh random seeds (default 10)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds instead of fresh ones")
    ap.add_argument("--campaigns", default=",".join(CAMPAIGNS),
                    help=f"which, in order (default {','.join(CAMPAIGNS)})")
    ap.add_argument("--logs", default=None, help="folder for each run's output "
                    "(default: a new temp folder, printed)")
    a = ap.parse_args(argv)
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
