"""Alarms: what is wrong with the box, decided by pure functions, shown everywhere.

Every alarm goes to the journal (a warning when raised, info when cleared), to
``linetap status`` and ``run/status.json``, to the MQTT health message, and to the
status LED as a blink code (docs/alarms.md). :func:`evaluate` decides the alarms that
follow from measurements; other parts raise their own (``low_storage`` from retention,
``sync_config``/``sync_conflict``/``sync_rejected``/``audit_refused`` from the
uploader).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Blink codes, highest priority first: the LED shows the code of the most urgent alarm.
BLINK_CODES: dict[str, int] = {
    "identity_key": 1,
    "capture_overruns": 2,
    "capture_stalled": 2,
    "low_storage": 3,
    "broker_unreachable": 4,
    "sync_backlog_age": 4,
    "sync_config": 4,
    "sync_rejected": 4,
    "audit_refused": 4,
    "sync_conflict": 4,
    "sync_unacknowledged": 4,
    "stuck_offhook": 5,
    "dead_line": 5,
    "clock_unsynchronised": 6,
    "clipping": 7,
}
SLOT_S = 0.25          # one LED slot
CYCLE_SLOTS = 16       # a 4 s cycle: N flashes, then dark


@dataclass
class Alarms:
    """Active alarms by name, each with its detail; thread-safe."""

    active: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set(self, name: str, on: bool, **detail) -> None:
        with self.lock:
            was = name in self.active
            if on:
                self.active[name] = detail
            else:
                self.active.pop(name, None)
        if on and not was:
            log.warning("alarm raised: %s %s", name, detail)
        elif was and not on:
            log.info("alarm cleared: %s", name)

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.active)


@dataclass(frozen=True)
class Thresholds:
    broker_down_s: float = 120.0      # link down this long -> broker_unreachable
    #                                   (sync.unreachable_alarm_s)
    ack_silence_s: float = 120.0      # broker took uploads, no ingest ack this long while
    #                                   connected -> sync_unacknowledged (sync.ack_alarm_s)
    backlog_age_s: float = 3600.0     # oldest unsynced segment older -> sync_backlog_age
    dead_line_s: float = 600.0        # near-silence this long -> dead_line
    clip_window_s: float = 60.0       # clipping seen within this window -> clipping


@dataclass(frozen=True)
class Inputs:
    """Measurements at one moment, all as durations in seconds (so line time and wall
    time never mix)."""

    overruns: int = 0
    capture_age_s: float = 0.0           # since capture last delivered audio
    clock_synchronised: bool = True
    sync_on: bool = False
    link_down_s: float | None = None     # how long the broker link has been down
    oldest_unsynced_age_s: float | None = None
    unanswered_s: float | None = None    # broker-accepted uploads without an ingest ack
    silent_s: tuple = ()                 # per line: seconds of unbroken near-silence
    clip_age_s: tuple = ()               # per line: seconds since the last clip, or None
    stuck_lines: tuple = ()              # lines whose call passed max_call_s


def evaluate(i: Inputs, t: Thresholds = Thresholds()) -> dict[str, dict | None]:
    """Each measured alarm -> its detail if active, or None if clear. Pure."""
    out: dict[str, dict | None] = {
        "capture_overruns": {"count": i.overruns} if i.overruns else None,
        "capture_stalled": {"seconds": round(i.capture_age_s, 1)}
        if i.capture_age_s > 5.0 else None,
        "clock_unsynchronised": None if i.clock_synchronised else
        {"detail": "system clock not NTP-synchronised; call times may be wrong"},
        "broker_unreachable": None,
        "sync_backlog_age": None,
        "sync_unacknowledged": None,
    }
    if i.sync_on:
        if i.link_down_s is not None and i.link_down_s >= t.broker_down_s:
            out["broker_unreachable"] = {"seconds": round(i.link_down_s)}
        if i.unanswered_s is not None and i.unanswered_s >= t.ack_silence_s:
            out["sync_unacknowledged"] = {
                "seconds": round(i.unanswered_s),
                "detail": "the broker accepted uploads but no ingest ack came back: the "
                          "broker's ACL is dropping them (certificate CN not the device id, "
                          "or device.site not the site it is enrolled at) or no ingest "
                          "worker is running"}
        age = i.oldest_unsynced_age_s
        if age is not None and age >= t.backlog_age_s:
            out["sync_backlog_age"] = {"oldest_s": round(age)}
    dead = [ln for ln, s in enumerate(i.silent_s) if s >= t.dead_line_s]
    out["dead_line"] = {"lines": dead} if dead else None
    clip = [ln for ln, a in enumerate(i.clip_age_s) if a is not None and a <= t.clip_window_s]
    out["clipping"] = {"lines": clip} if clip else None
    out["stuck_offhook"] = {"lines": list(i.stuck_lines)} if i.stuck_lines else None
    return out


def blink_code(active) -> int:
    """The code shown: that of the most urgent active alarm, or 0 (heartbeat)."""
    codes = [BLINK_CODES.get(name, 8) for name in active]
    return min(codes) if codes else 0


def led_on(code: int, slot: int) -> bool:
    """Is the status LED lit in ``slot`` (0-based, SLOT_S each)?

    Code 0 is a heartbeat (1 s on, 1 s off); code N is N flashes of one slot with one
    slot dark between them, then dark until the 4 s cycle ends.
    """
    if code == 0:
        return (slot // 4) % 2 == 0
    k = slot % CYCLE_SLOTS
    return k < 2 * code and k % 2 == 0
