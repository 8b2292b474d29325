"""``linetap update``: the box's side of A/B updates (docs/updates.md).

``linetap update gate`` is the health gate ``linetap-mark-good.service`` runs at every
boot (:mod:`recorder.runtime.healthgate`): it marks the booted slot good once the box is
healthy, or, on a trial boot that stays unhealthy past the deadline, marks it bad and
reboots into the old slot. ``linetap update status`` prints the slots and the update
state. The upstream offers updates with a signed command (``linetap upstream update``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recorder import config as rconfig
from recorder.runtime import healthgate
from sync.update import stages
from sync.update.rauc import Rauc
from sync.update.service import system_reboot


def cli_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="linetap update", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="config file (default /etc/linetap/linetap.toml)")
    ap.add_argument("--data-dir", help="override device.data_dir")
    ap.add_argument("--rauc-conf", help="RAUC system config (default /etc/rauc/system.conf)")
    sub = ap.add_subparsers(dest="verb", metavar="VERB", required=True)
    g = sub.add_parser("gate", help="mark this slot good when healthy, or roll back")
    g.add_argument("--deadline", type=float, help="seconds (default update.gate_deadline_s)")
    sub.add_parser("status", help="the slots and the update state, as JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv[1:] if argv[:1] == ["--"] else argv)
    cfg = rconfig.load(args.config, missing_ok=True)
    data_dir = Path(args.data_dir or cfg.device.data_dir)
    rauc = Rauc(args.rauc_conf)
    if args.verb == "status":
        st = stages.load(data_dir / "update")
        print(json.dumps({"slots": rauc.slots().__dict__,
                          "update": None if st is None else st.__dict__}, indent=2))
        return 0
    deadline = args.deadline if args.deadline is not None else cfg.update.gate_deadline_s
    verdict = healthgate.run(data_dir, lines=cfg.audio.lines, sync_enabled=cfg.sync.enabled,
                             deadline_s=deadline, rauc=rauc, reboot=system_reboot)
    print(f"health gate: {verdict}")
    # "unhealthy" (the committed slot failing) exits 0: the unit's FailureAction=reboot
    # is for a trial boot, and rebooting a committed slot would change nothing.
    return 1 if verdict == "failed" else 0
