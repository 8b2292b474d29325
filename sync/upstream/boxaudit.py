"""The boxes' own audit logs, held upstream: stored, checked, and their breaks raised.

A box ships its signed audit entries on ``<prefix>/<site>/<device>/audit``
(:mod:`sync.auditship`). For each entry, in order, :func:`judge` decides (pure):

* **duplicate**: the upstream already holds this (device, hash): acked again;
* **refused**: not a valid entry, ``hash mismatch``, ``bad signature`` (checked with the
  device's PINNED identity from the upstream config, never a key the entry names), or
  ``unsigned after signing started``. Not stored, not acked; a problem
  (``audit_refused``) and an upstream audit row (``box_audit_refused``) name it, and the
  rest of the message waits (the box holds its entries and offers them again);
* **extends** the device's chain (``seq`` one more than the stored head, ``prev`` its
  hash): stored and acked;
* **breaks** it: stored in a new *epoch* and acked (nothing the box recorded is lost),
  with a problem (``audit_break``) and an upstream audit row (``box_audit_break``)
  giving the reason: ``restart`` (seq 1 again: the box's log was deleted, or the box
  was factory reset), ``went backwards`` (a seq the upstream already holds, with other
  contents: truncated or rewritten), ``sequence gap`` (seqs missing), ``chain broken``
  (the next seq, not chained onto the stored head).

Health messages carry the box's current head (``audit``: seq and hash); a head behind
what the upstream holds (the box's copy deleted or truncated, even with nothing new
written since) is a problem too (``audit_behind``, :func:`behind`). The rows commit in the ingest's
batch transaction, before any ack is published. :func:`verify` re-checks every device's
chain and its breaks for ``linetap upstream audit --verify``; a break an operator has
resolved (``linetap upstream resolve``, e.g. a confirmed factory reset) is listed as
resolved and no longer fails it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from recorder.evidence import auditchain as ac
from recorder.evidence import keys
from recorder.evidence.auditchain import GENESIS, Link
from recorder.timebase import parse_iso
from sync.upstream.store import BoxAudit, Problem, UAudit, audit

log = logging.getLogger(__name__)

CALL = "audit-log"          # Problem.call for the box audit's problems (they have no call)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

DUPLICATE, EXTEND, BREAK, REFUSE = "duplicate", "extend", "break", "refuse"
RESTART, BACKWARDS = "restart", "went backwards"


@dataclass(frozen=True)
class Head:
    """The device's stored head: its epoch, seq and hash, and whether that epoch has a
    signed entry yet (unsigned entries are refused after one)."""

    epoch: int
    seq: int
    hash: str
    signed: bool


@dataclass(frozen=True)
class Verdict:
    kind: str                   # duplicate | extend | break | refuse
    reason: str = ""            # why a break or a refusal
    epoch: int = 0              # where an extend or a break is stored


def _valid(e: dict) -> bool:
    return (isinstance(e.get("seq"), int) and not isinstance(e.get("seq"), bool)
            and e["seq"] >= 1 and isinstance(e.get("hash"), str)
            and bool(_HEX64.match(e["hash"])) and isinstance(e.get("prev"), str)
            and bool(_HEX64.match(e["prev"])))


def break_reason(seq: int, prev: str, head: Head | None) -> str | None:
    """Why entry (``seq``, ``prev``) does not extend ``head``; None if it does. Pure."""
    if head is None:
        return None if (seq, prev) == (1, GENESIS) else \
            f"{ac.SEQ_GAP}: the first entry the upstream sees is seq {seq}, not 1"
    if seq == head.seq + 1 and prev == head.hash:
        return None
    if (seq, prev) == (1, GENESIS):
        return (f"{RESTART}: the box's log starts again at seq 1 after seq {head.seq} "
                "(deleted, or the box was reset)")
    if seq <= head.seq:
        return (f"{BACKWARDS}: seq {seq} with other contents after seq {head.seq} "
                "(the box's log was truncated or rewritten)")
    if seq > head.seq + 1:
        return f"{ac.SEQ_GAP}: seq {seq} after seq {head.seq} (seq {head.seq + 1}.." \
               f"{seq - 1} never arrived)"
    return f"{ac.CHAIN_BROKEN}: seq {seq} does not chain onto the stored seq {head.seq}"


def judge(e: dict, head: Head | None, held: bool, device_key) -> Verdict:
    """What to do with one box audit entry. ``held``: the upstream already holds this
    (device, hash); ``device_key``: the device's pinned identity. Pure."""
    if not _valid(e):
        return Verdict(REFUSE, ac.NOT_ENTRY)
    if held:
        return Verdict(DUPLICATE)
    if ac.entry_hash(e) != e["hash"]:
        return Verdict(REFUSE, ac.HASH_MISMATCH)
    why = break_reason(e["seq"], e["prev"], head)
    epoch = 0 if head is None else head.epoch + (1 if why else 0)
    started = head is not None and why is None and head.signed
    sig = e.get("sig")
    if e.get("signer") and not sig:
        return Verdict(REFUSE, f"{ac.BAD_SIGNATURE} (signature missing)")
    if sig and not ac.signature_ok(device_key, e["hash"], sig, ac.BOX_DOMAIN):
        return Verdict(REFUSE, f"{ac.BAD_SIGNATURE} (not the device's pinned identity)")
    if not sig and started:
        return Verdict(REFUSE, ac.UNSIGNED_LATE)
    return Verdict(EXTEND if why is None else BREAK, why or "", epoch)


def _head(device: str) -> Head | None:
    last = (BoxAudit.select().where(BoxAudit.device == device)
            .order_by(BoxAudit.epoch.desc(), BoxAudit.seq.desc()).first())
    if last is None:
        return None
    signed = BoxAudit.select().where((BoxAudit.device == device)
                                     & (BoxAudit.epoch == last.epoch)
                                     & BoxAudit.signed).exists()
    return Head(last.epoch, last.seq, last.hash, signed)


def _problem(kind: str, device: str, seq, h: str, detail: str, **more) -> None:
    """One problem per (kind, device, seq, hash), audited when first raised."""
    seen = Problem.select().where((Problem.kind == kind) & (Problem.device == device)
                                  & (Problem.call == CALL) & (Problem.seq == (seq or 0))
                                  & (Problem.sha256 == h)).exists()
    if not seen:
        Problem.insert(kind=kind, device=device, call=CALL, seq=seq or 0, sha256=h,
                       detail=detail).on_conflict_ignore().execute()
        audit(f"box_{kind}", device=device, seq=seq, hash=h, reason=detail, **more)
        log.error("ALARM %s: %s seq %s: %s", kind, device, seq, detail)


def receive(device: str, entries: list[dict], device_key) -> tuple[list, list]:
    """Store a message's entries in order (inside the caller's transaction). Returns
    (acked (seq, hash) pairs, refused (seq, reason) pairs: at most one, the first)."""
    acked, refused = [], []
    head = _head(device)
    for e in entries:
        h = e.get("hash") if isinstance(e.get("hash"), str) else ""
        held = bool(h) and BoxAudit.select().where(
            (BoxAudit.device == device) & (BoxAudit.hash == h)).exists()
        v = judge(e, head, held, device_key)
        seq = e.get("seq") if isinstance(e.get("seq"), int) else None
        if v.kind == REFUSE:
            _problem("audit_refused", device, seq, h or "-", v.reason)
            refused.append((seq or 0, v.reason))
            break
        if v.kind == DUPLICATE:
            acked.append((seq, h))
            continue
        if v.kind == BREAK:
            _problem("audit_break", device, seq, h, v.reason,
                     epoch=v.epoch, previous_head=head.seq if head else None)
        BoxAudit.create(device=device, epoch=v.epoch, seq=seq, hash=h, prev=e["prev"],
                        entry=e, signed=bool(e.get("sig")),
                        key=keys.raw_public(device_key).hex() if e.get("sig") else None)
        head = Head(v.epoch, seq, h, bool(e.get("sig")) or (
            head is not None and head.epoch == v.epoch and head.signed))
        acked.append((seq, h))
    return acked, refused


SKEW_S = 2.0     # an entry stamped this much before a health message was surely in the log


def behind(seq: int, h: str, head: Head, stored_hash: str | None, next_ts: float | None,
           reported_at: float | None) -> str | None:
    """Why a box reporting its log ends at (``seq``, ``h``) at ``reported_at`` (its
    clock, epoch s) has lost entries the upstream holds up to ``head``; None if not.
    ``stored_hash``: the held entry at ``seq`` in the head's epoch (None: none);
    ``next_ts``: the box's own timestamp of the held entry ``seq + 1`` (None: none).
    The health message and the entries travel separately, so an entry the box wrote
    after reporting may arrive first: only an entry stamped ``SKEW_S`` before the
    report counts as missing from it. Pure."""
    if seq > head.seq or (seq == head.seq and h == head.hash):
        return None
    if stored_hash is not None and stored_hash != h or seq == head.seq:
        return (f"the box's audit log ends at seq {seq} with other contents than the "
                f"upstream holds (up to seq {head.seq}): its copy was rewritten or replaced")
    if next_ts is None or reported_at is None or next_ts > reported_at - SKEW_S:
        return None                      # entry seq+1 may be newer than the report
    if seq == 0:
        return (f"the box's audit log is empty, but the upstream holds up to seq "
                f"{head.seq}: its copy was deleted")
    return (f"the box's audit log ends at seq {seq}, but the upstream holds up to seq "
            f"{head.seq}: its copy was truncated")


def check_head(device: str, seq, h, reported_at=None) -> str | None:
    """The box's health message says its log ends at (``seq``, ``h``), at
    ``reported_at`` (epoch s, the box's clock): raise :func:`behind`'s problem (once,
    audited) and return it, or None."""
    head = _head(device)
    if head is None or not isinstance(seq, int) or not isinstance(h, str):
        return None
    def at(n):
        return BoxAudit.get_or_none((BoxAudit.device == device)
                                    & (BoxAudit.epoch == head.epoch) & (BoxAudit.seq == n))
    stored, nxt = at(seq), at(seq + 1)
    try:
        next_ts = parse_iso(nxt.entry["ts"]) if nxt is not None else None
    except (KeyError, TypeError, ValueError):
        next_ts = None
    why = behind(seq, h, head, stored.hash if stored else None, next_ts,
                 reported_at if isinstance(reported_at, (int, float)) else None)
    if why is not None:
        _problem("audit_behind", device, seq, h, why, held_head=head.seq)
    return why


# -- verification ------------------------------------------------------------------------

@dataclass
class DeviceVerdict:
    device: str
    epochs: int
    report: ac.Report               # every epoch's entries, checked in turn
    breaks: list[str]               # why each epoch after the first began (open ones)
    resolved: list[str]             # breaks an operator resolved (with the note)

    @property
    def status(self) -> str:
        return ac.BROKEN if self.breaks else self.report.status

    def as_dict(self) -> dict:
        rest = {k: v for k, v in self.report.as_dict().items() if k != "status"}
        return {"device": self.device, "epochs": self.epochs, "status": self.status,
                "breaks": self.breaks, "resolved": self.resolved, **rest}


def _vouched(device: str, key_hex: str):
    """The identity ``key_hex`` if the upstream's own (signed) trail records it pinned
    for ``device`` (``device_enrolled`` or ``identity_pinned`` naming its fingerprint),
    else None. An epoch signed before a re-pin (a factory-reset box) is checked with the
    key it was accepted under only if the upstream itself vouched for that key."""
    try:
        raw = bytes.fromhex(key_hex)
        fp = keys.fingerprint(raw)
    except (ValueError, TypeError):
        return None
    for a in UAudit.select().where(UAudit.action.in_(("device_enrolled", "identity_pinned"))):
        d = a.detail if isinstance(a.detail, dict) else {}
        if d.get("device") == device and d.get("identity") == fp:
            return keys.load_ed25519_public(raw)
    return None


def _epoch_key(device: str, rows, current):
    """The key an epoch's signatures are checked with: the pinned one, unless the epoch
    was accepted under another key that the upstream's trail vouches for."""
    stored = next((r.key for r in rows if r.key), None)
    if current is None or stored is None or stored == keys.raw_public(current).hex():
        return current
    return _vouched(device, stored) or current


def verify_device(device: str, device_key) -> DeviceVerdict:
    """Re-check everything held of ``device``'s log against its pinned key (None: the
    signatures cannot be checked; an epoch from before a re-pin: :func:`_epoch_key`)
    and list its breaks."""
    total = ac.Report()
    breaks: list[str] = []
    resolved: list[str] = []
    head: Head | None = None
    epochs = 0
    for epoch in [r.epoch for r in BoxAudit.select(BoxAudit.epoch).distinct()
                  .where(BoxAudit.device == device).order_by(BoxAudit.epoch)]:
        rows = list(BoxAudit.select().where((BoxAudit.device == device)
                                            & (BoxAudit.epoch == epoch))
                    .order_by(BoxAudit.seq))
        epochs += 1
        first = rows[0]
        why = break_reason(first.seq, first.prev, head)
        if why is not None:
            text = f"{device} epoch {epoch} begins at seq {first.seq}: {why}"
            p = Problem.get_or_none((Problem.kind == "audit_break")
                                    & (Problem.device == device) & (Problem.call == CALL)
                                    & (Problem.seq == first.seq)
                                    & (Problem.sha256 == first.hash))
            if p is not None and p.resolved_time is not None:
                resolved.append(f"{text} [resolved: {p.resolution or ''}]")
            else:
                breaks.append(text)
        r = ac.check([Link(f"{device} epoch {epoch} seq {x.seq}", x.entry) for x in rows],
                     _epoch_key(device, rows, device_key), ac.BOX_DOMAIN,
                     start=(first.seq, first.prev))
        for k in ("entries", "signed", "unsigned_legacy", "unchecked"):
            setattr(total, k, getattr(total, k) + getattr(r, k))
        total.problems += r.problems
        total.head = r.head
        head = Head(epoch, r.head[0], r.head[1], True)
    for p in Problem.select().where((Problem.device == device) & (Problem.call == CALL)
                                    & (Problem.kind == "audit_behind")
                                    & Problem.resolved_time.is_null()):
        breaks.append(f"{device}: {p.detail}")
    return DeviceVerdict(device, epochs, total, breaks, resolved)


def devices() -> list[str]:
    return [r.device for r in BoxAudit.select(BoxAudit.device).distinct()
            .order_by(BoxAudit.device)]


def verify(ucfg) -> list[DeviceVerdict]:
    """Every device whose entries the upstream holds, checked against its pinned
    identity in ``ucfg`` (a device no longer configured: unverifiable)."""
    out = []
    for dev in devices():
        site = ucfg.site_of(dev)
        out.append(verify_device(dev, site.devices[dev] if site is not None else None))
    return out
