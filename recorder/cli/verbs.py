"""Handlers for the ``linetap`` subcommands that live in the recorder package."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from recorder import config
from recorder.errors import ConfigError
from recorder.evidence import audit, keys
from recorder.privacy import mask_number
from recorder.runpaths import status_candidates
from recorder.runtime.daemon import STATUS_FILE
from recorder.storage.store import DB_FILE
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
    from recorder.evidence.practice_key import PBKDF2_ITERATIONS, get_passphrase
    pw = get_passphrase(getattr(args, "passphrase_file", None), new=True)
    priv, pub = keys.practice_keygen(args.out, passphrase=pw)
    print(f"practice private key: {priv} (mode 0600, encrypted PKCS#8: PBKDF2-HMAC-SHA256 "
          f"x{PBKDF2_ITERATIONS}, AES-256-CBC; keep it off the box, back it up, and keep "
          "the passphrase apart from it)")
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
    """Show the log, or (``--verify``) check it against the TRUSTED identity: exit 0
    verified, 1 a bad entry (the first one is named), 3 unverifiable or unsigned."""
    cfg = _cfg(args)
    data_dir = cfg.device.data_dir
    if args.verify:
        from recorder.evidence import trust
        store = _store(data_dir) if (Path(data_dir) / DB_FILE).exists() else None
        trusted = trust.trusted_identity(store, data_dir, args.identity_pub)
        r = audit.verify(data_dir, trusted.key)
        if args.json:
            _print_json({**r.as_dict(), "trusted_key": trusted.source})
            return r.exit_code
        _print_audit_report(r, trusted.key is not None, trusted.source)
        return r.exit_code
    for e in audit.read(data_dir):
        print(f"{e.get('seq'):>6} {e.get('ts')} {e.get('action'):<18} "
              f"{json.dumps(e.get('detail'), sort_keys=True)}")
    return 0


def _print_audit_report(r, have_key: bool, source: str) -> None:
    """The verdict of :func:`recorder.evidence.auditchain.check` for people."""
    from recorder.evidence import auditchain as ac
    if r.first_bad is not None:
        print(f"FIRST BAD ENTRY: {r.first_bad}")
        for p in r.problems[1:]:
            print(f"  then: {p}")
    for t in r.torn:
        print(f"{t}: not tampering")
    if r.unsigned_legacy:
        print(f"unsigned (legacy): the first {r.unsigned_legacy} entr"
              f"{'y' if r.unsigned_legacy == 1 else 'ies'}, written before signing "
              "started; chained, but nothing proves who wrote them")
    if not have_key:
        from recorder.evidence import trust
        print(f"UNVERIFIABLE: {source}: {trust.UNVERIFIABLE}")
    print(f"audit log: {r.entries} entries, {r.signed} with a verified signature: "
          f"{r.status.upper() if r.status != ac.VERIFIED else 'verified'}"
          f" (key: {source})")


# -- running -----------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from hw import scenario as scen
    from recorder.runtime import simulate
    sc = scen.load(args.scenario)
    cfg = config.load(args.config) if args.config else config.Config()
    cfg = simulate.sim_config(cfg, sc, args.data_dir, args.public_key, args.announcement)
    if not Path(cfg.recording.public_key).exists():
        raise ConfigError([f"practice public key {cfg.recording.public_key} not found: "
                           "pass --public-key K.pub (from 'linetap keygen')"])
    speed = 1.0 if args.realtime else args.speed
    # --realtime: the simulated card runs on its own clock, as hardware does, so a
    # daemon that falls behind loses audio (counted and alarmed) instead of being waited for.
    res = simulate.run(sc, cfg, speed=speed, until_synced_s=args.until_synced,
                       free_running=args.realtime)
    st = res.status
    print(f"simulated {sc.duration:.1f} s on {sc.lines} line(s): {st['counts']['calls']} "
          f"call(s), {st['counts']['missed']} missed, {st['writer']['segments']} segment(s), "
          f"overruns {st['overruns']['consumer']}, xruns {st['overruns']['alsa_xruns']}")
    if res.synced is not None:
        print(f"synced: every segment and manifest acked upstream "
              f"({res.synced['acked']} ack(s) this run, waited {res.synced['seconds']} s)")
    return 0


def cmd_run(args) -> int:
    from recorder.runtime.assembly import build_services
    from recorder.runtime.daemon import Daemon
    from recorder.runtime.hardware import Hardware
    from recorder.runtime.sdnotify import SdNotifier
    cfg = _cfg(args)
    if cfg.device.hardware == "sim":
        raise ConfigError(["device.hardware is 'sim': use 'linetap simulate SCENARIO'"])
    hw = Hardware(cfg.audio.capture_device, cfg.audio.playback_device,
                  pin_factory=cfg.pins.factory)
    d = Daemon(cfg, hw, services=build_services, notifier=SdNotifier())
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
    st = _live_status(Path(cfg.device.data_dir))
    from recorder.storage.store import Store
    if (Path(cfg.device.data_dir) / DB_FILE).exists():
        st["store"] = Store(cfg.device.data_dir).summary()
    if args.json:
        _print_json(st)
        return 0
    print(f"device {st.get('device', config.device_id(cfg))}, version "
          f"{st.get('version', '?')}")
    if not st["running"]:
        print(f"  recorder NOT RUNNING: what follows is from "
              f"{st.get('stale_since') or 'nothing'}, not live ({st.get('why')})")
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
        link = sync.get("link", "?") if st["running"] else "unknown (recorder not running)"
        print(f"  sync: {link}, backlog {sync.get('backlog', '?')}")
        if st["running"] and sync.get("attempts"):
            print(f"    {sync['attempts']} failed attempt(s), next in "
                  f"{sync.get('next_retry_s') or '?'} s: {sync.get('last_error')}")
        elif st["running"] and sync.get("detail") and sync.get("link") != "online":
            print(f"    {sync['detail']}")
    return 0


def _live_status(data_dir: Path) -> dict:
    """The running recorder's status over its control socket, with ``running`` True;
    else the last status file, marked ``running`` False with why and its time (a file
    alone used to show "online" long after the daemon had exited)."""
    from recorder.errors import ProtocolError
    from recorder.runtime import control_client
    try:
        st = control_client.request(control_client.socket_path(data_dir),
                                    {"cmd": "status"}, timeout_s=3.0)
        st.pop("ok", None)
        return {**st, "running": True}
    except (control_client.RecorderNotRunning, ProtocolError, OSError) as exc:
        why = str(exc)
    path = next((p for p in status_candidates(data_dir) if p.exists()), data_dir / STATUS_FILE)
    try:
        st = json.loads(path.read_text())
        stale = iso(path.stat().st_mtime)
    except FileNotFoundError:
        st, stale = {}, None
    except ValueError:
        st, stale = {"error": "status file unreadable"}, None
    return {**st, "running": False, "why": why, "stale_since": stale}


# -- calls, export, verify -----------------------------------------------------------------------
def _store(data_dir):
    from recorder.storage.store import Store
    if not (Path(data_dir) / DB_FILE).exists():
        raise ConfigError([f"no Linetap store in {data_dir}"])
    return Store(data_dir)


def _calls_with_number(store, args) -> tuple[list, int]:
    """The rows ``calls --number`` lists: opened with the practice key, since the box
    keeps numbers only sealed to it. Audited with the number masked."""
    from recorder.errors import KeyFileError
    from recorder.evidence import personal
    if not args.key:
        raise KeyFileError("calls --number needs --key PRACTICE_KEY (and its passphrase): "
                           "the box keeps caller and dialled numbers only sealed to the "
                           "practice key")
    priv = keys.open_practice_private(args.key, args.passphrase_file)
    rows, unreadable = personal.with_number(store.calls(), priv, args.number)
    audit.record(args.data_dir, "search_number", number=mask_number(args.number),
                 matches=len(rows), unreadable=unreadable)
    return rows, unreadable


def cmd_calls(args) -> int:
    """List the calls, numbers masked. Exit 1 when ``--number`` could not open every
    call's sealed data (the search is incomplete, never a silent "no calls")."""
    store = _store(args.data_dir)
    unreadable = 0
    if args.number:
        found, unreadable = _calls_with_number(store, args)
    else:
        found = store.calls()
    rows = []
    for r in found:
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
                     "number": r.party_masked, "legal_hold": r.legal_hold})
    if args.json:
        _print_json(rows)
    else:
        print(f"{'call':<32} {'line':>4} {'dir':<8} {'state':<9} {'start':<24} "
              f"{'dur s':>7} {'pauses':>6} {'segs':>4} {'upload':>7} number")
        for r in rows:
            print(f"{r['call_id']:<32} {r['line']:>4} {r['direction']:<8} {r['state']:<9} "
                  f"{r['start'] or '-':<24} {_dash(r['duration_s']):>7} "
                  f"{r['pauses']:>6} {r['segments']:>4} {r['upload']:>7} "
                  f"{r['number'] or '-'}")
    if unreadable:
        print(f"INCOMPLETE SEARCH: the sealed numbers of {unreadable} call(s) did not open "
              "with this key; the calls listed are the matches among the rest",
              file=sys.stderr)
        return 1
    return 0


def _dash(v) -> str:
    return "-" if v is None else str(v)


def cmd_verify(args) -> int:
    """Exit 0: every call verified; 1: any failed; 3: none failed but some are
    unverifiable (no trusted identity key to match the signer to)."""
    from recorder.evidence.verify import verify_call
    from recorder.storage.store import trusted_for
    store = _store(args.data_dir)
    trusted = trusted_for(args.data_dir, getattr(args, "identity_pub", None))
    if trusted.key is None:
        print(f"WARNING: no trusted identity key ({trusted.source}); signatures are "
              "checked but cannot be matched to this box, so no call is verified: pass "
              "--identity-pub FILE", file=sys.stderr)
    else:
        print(f"identity: {trusted.source}")
    failed = unverifiable = 0
    rows = store.calls(ids=args.call or None)
    for row in rows:
        v, _h = verify_call(store, row, trusted.key)
        failed += v.status == "failed"
        unverifiable += v.status == "unverifiable"
        print(f"{row.id}: {v.status}: {v.detail}")
    audit.record(args.data_dir, "verify", calls=len(rows), failed=failed,
                 unverifiable=unverifiable)
    print(f"{len(rows)} call(s) checked, {failed} failed, {unverifiable} unverifiable")
    return 1 if failed else 3 if unverifiable else 0


def cmd_export(args) -> int:
    from recorder.evidence.export import export_calls
    from recorder.storage.store import trusted_for
    store = _store(args.data_dir)
    trusted = trusted_for(args.data_dir, getattr(args, "identity_pub", None))
    if trusted.key is None:
        print(f"WARNING: no trusted identity key ({trusted.source}): calls are exported "
              "as unverifiable; pass --identity-pub FILE", file=sys.stderr)
    from recorder.evidence.keys import open_practice_private
    priv = open_practice_private(args.key, getattr(args, "passphrase_file", None))
    done, failures = export_calls(store, priv, args.out, ids=args.call, number=args.number,
                                  device_key=trusted.key, data_dir=args.data_dir)
    unverifiable = sum(d["status"] == "unverifiable" for d in done)
    for d in done:
        print(f"{d['call_id']}: {d['status']} ({d['duration_s']} s)")
    print(f"exported {len(done)} call(s) to {args.out}; {failures} failed verification, "
          f"{unverifiable} unverifiable")
    return 1 if failures else 3 if unverifiable else 0
