"""Handlers for the ``linetap`` subcommands that live in the recorder package."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from recorder import audit, config, keys
from recorder.errors import ConfigError
from recorder.logsetup import mask_number
from recorder.timebase import iso

log = logging.getLogger(__name__)


def _cfg(args) -> config.Config:
    path = getattr(args, "config", None)
    cfg = config.load(path, missing_ok=path is None)
    dd = getattr(args, "data_dir", None)
    return cfg.replace(device__data_dir=dd) if dd else cfg


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# -- config ----------------------------------------------------------------------------------
def cmd_config(args) -> int:
    if args.config_cmd == "check":
        try:
            cfg = config.load(args.file)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"{args.file}: OK ({cfg.audio.lines} line(s) at {cfg.audio.rate} Hz)")
        return 0
    if args.config_cmd == "reference":
        print(config.reference_markdown())
        return 0
    print(config.dumps(config.load(args.config, missing_ok=args.config is None)))
    return 0


# -- keys and identity -------------------------------------------------------------------------
def cmd_keygen(args) -> int:
    priv, pub = keys.practice_keygen(args.out)
    print(f"practice private key: {priv} (mode 0600: keep it off the box, and back it up)")
    print(f"practice public key:  {pub} (install this on the box)")
    return 0


def cmd_identity(args) -> int:
    cfg = _cfg(args)
    pub, fp = keys.identity_public(cfg.device.data_dir)
    print(f"device:      {config.device_id(cfg)}")
    print(f"public key:  {pub.hex()}")
    print(f"fingerprint: {fp}")
    return 0


def cmd_audit(args) -> int:
    cfg = _cfg(args)
    if args.verify:
        n, problems = audit.verify(cfg.device.data_dir)
        for p in problems:
            print(f"TAMPERED: {p}")
        print(f"{n} entries checked: {'intact' if not problems else 'NOT intact'}")
        return 1 if problems else 0
    for e in audit.read(cfg.device.data_dir):
        print(f"{e.get('seq'):>6} {e.get('ts')} {e.get('action'):<18} "
              f"{json.dumps(e.get('detail'), sort_keys=True)}")
    return 0


# -- running -----------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from hw import scenario as scen
    from recorder import simulate
    sc = scen.load(args.scenario)
    cfg = config.load(args.config) if args.config else config.Config()
    cfg = simulate.sim_config(cfg, sc, args.data_dir, args.public_key, args.announcement)
    if not Path(cfg.recording.public_key).exists():
        raise ConfigError([f"practice public key {cfg.recording.public_key} not found: "
                           "pass --public-key K.pub (from 'linetap keygen')"])
    speed = 1.0 if args.realtime else args.speed
    res = simulate.run(sc, cfg, speed=speed)
    st = res.status
    print(f"simulated {sc.duration:.1f} s on {sc.lines} line(s): {st['counts']['calls']} "
          f"call(s), {st['counts']['missed']} missed, {st['writer']['segments']} segment(s), "
          f"overruns {st['overruns']['consumer']}")
    return 0


def cmd_run(args) -> int:
    from recorder.daemon import Daemon, Hardware
    from recorder.sdnotify import SdNotifier
    cfg = _cfg(args)
    if cfg.device.hardware == "sim":
        raise ConfigError(["device.hardware is 'sim': use 'linetap simulate SCENARIO'"])
    hw = Hardware(cfg.audio.capture_device, cfg.audio.playback_device)
    d = Daemon(cfg, hw, notifier=SdNotifier())
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    d.start()
    try:
        while not stop.wait(1.0):
            if d.stop.is_set():
                break
    finally:
        d.shutdown()
    return 0 if not d.stop.is_set() or stop.is_set() else 1


def cmd_status(args) -> int:
    cfg = _cfg(args)
    from recorder.runpaths import status_candidates
    path = next((p for p in status_candidates(Path(cfg.device.data_dir)) if p.exists()),
                Path(cfg.device.data_dir) / "run" / "status.json")
    try:
        st = json.loads(path.read_text())
    except FileNotFoundError:
        st = {"running": False}
    except ValueError:
        st = {"running": False, "error": "status file unreadable"}
    from recorder.store import Store
    if (Path(cfg.device.data_dir) / "linetap.db").exists():
        st["store"] = store_summary(Store(cfg.device.data_dir))
    if args.json:
        _print_json(st)
        return 0
    print(f"device {st.get('device', config.device_id(cfg))}, version "
          f"{st.get('version', '?')}")
    for ln in st.get("lines", []):
        print(f"  line {ln['line']}: {ln['state']:<8} hook {ln['hook']:<3} level "
              f"{ln['level_dbfs']:>6} dBFS{'  PAUSED' if ln.get('paused') else ''}")
    ov = st.get("overruns", {})
    print(f"  overruns: consumer {ov.get('consumer', 0)}, ALSA {ov.get('alsa_xruns', 0)}")
    for name, detail in (st.get("alarms") or {}).items():
        print(f"  ALARM {name}: {detail}")
    s = st.get("store", {})
    print(f"  calls {s.get('calls', 0)}, segments {s.get('segments', 0)}, not yet synced "
          f"{s.get('unsynced_segments', 0)} (oldest {s.get('oldest_unsynced') or '-'})")
    sync = st.get("sync") or {}
    if sync:
        print(f"  sync: {sync.get('link', '?')}, backlog {sync.get('backlog', '?')}")
    return 0


def store_summary(store) -> dict:
    C, S = store.m.Call, store.m.Segment
    unsynced = S.select().where(S.acked == False)  # noqa: E712 - peewee expression
    oldest = unsynced.order_by(S.created).first()
    return {"calls": C.select().where(C.state != "deleted").count(),
            "segments": S.select().count(), "unsynced_segments": unsynced.count(),
            "oldest_unsynced": iso(oldest.created) if oldest else None}


# -- calls, export, verify -----------------------------------------------------------------------
def _store(data_dir):
    from recorder.store import Store
    if not (Path(data_dir) / "linetap.db").exists():
        raise ConfigError([f"no Linetap store in {data_dir}"])
    return Store(data_dir)


def cmd_calls(args) -> int:
    store = _store(args.data_dir)
    rows = []
    for r in store.calls(number=args.number):
        dur = None
        if r.end_time is not None and r.offhook_time is not None:
            dur = round(r.end_time - r.offhook_time, 1)
        S = store.m.Segment
        acked = S.select().where((S.call == r.id) & (S.acked == True)).count()  # noqa: E712
        rows.append({"call_id": r.id, "line": r.line, "direction": r.direction,
                     "state": r.state, "start": iso(r.offhook_time or r.ring_time),
                     "duration_s": dur, "pauses": len((r.meta or {}).get("pauses", [])),
                     "segments": r.segments,
                     "upload": "synced" if r.segments and acked == r.segments
                     and r.manifest_acked else f"{acked}/{r.segments}",
                     "caller": r.caller_number, "dialled": r.dialled_digits,
                     "legal_hold": r.legal_hold})
    if args.json:
        _print_json(rows)
        return 0
    print(f"{'call':<32} {'line':>4} {'dir':<8} {'state':<9} {'start':<24} {'dur s':>7} "
          f"{'pauses':>6} {'segs':>4} {'upload':>7} caller")
    for r in rows:
        who = mask_number(r["caller"] or r["dialled"]) if (r["caller"] or r["dialled"]) \
            else "-"
        print(f"{r['call_id']:<32} {r['line']:>4} {r['direction']:<8} {r['state']:<9} "
              f"{r['start'] or '-':<24} {_dash(r['duration_s']):>7} "
              f"{r['pauses']:>6} {r['segments']:>4} {r['upload']:>7} {who}")
    return 0


def _dash(v) -> str:
    return "-" if v is None else str(v)


def cmd_verify(args) -> int:
    from recorder.verify import device_key_for, verify_call
    store = _store(args.data_dir)
    key = device_key_for(args.data_dir)
    if key is None:
        print("WARNING: the box's identity key is unreadable; signatures are checked but "
              "the signer cannot be matched to this box", file=sys.stderr)
    failed = 0
    rows = store.calls(ids=args.call or None)
    for row in rows:
        v, _h = verify_call(store, row, key)
        if v.status == "failed":
            failed += 1
        print(f"{row.id}: {v.status}: {v.detail}")
    audit.record(args.data_dir, "verify", calls=len(rows), failed=failed)
    print(f"{len(rows)} call(s) checked, {failed} failed")
    return 1 if failed else 0


def cmd_export(args) -> int:
    from recorder.export import export_calls
    from recorder.verify import device_key_for
    store = _store(args.data_dir)
    priv = keys.load_practice_private(args.key)
    done, failures = export_calls(store, priv, args.out, ids=args.call, number=args.number,
                                  device_key=device_key_for(args.data_dir),
                                  data_dir=args.data_dir)
    for d in done:
        print(f"{d['call_id']}: {d['status']} ({d['duration_s']} s)")
    print(f"exported {len(done)} call(s) to {args.out}; {failures} failed verification")
    return 1 if failures else 0
