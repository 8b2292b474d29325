"""Checking a signed, hash-chained audit log: the box's ``audit.log``, the upstream's
``uaudit`` table and the box entries the upstream holds all use these rules.

Each entry has ``seq`` (1, 2, ...), ``prev`` (the previous entry's ``hash``; 64 zeros
for the first), ``hash`` (sha256 of the canonical JSON of the entry without ``hash``
and ``sig``) and, from the moment its writer had a key, ``sig``: the hex Ed25519
signature over ``domain + bytes.fromhex(hash)``. The domain separates the box's log
(:data:`BOX_DOMAIN`) from the upstream's (:data:`UPSTREAM_DOMAIN`), so a signature made
for one can never be replayed into the other.

:func:`check` is pure: it takes the entries as :class:`Link` objects and the TRUSTED
public key (never a key named inside the log) and returns a :class:`Report` whose
``problems`` are in log order, so ``problems[0]`` is the first bad entry. The reasons:

* ``hash mismatch``: the entry was altered after it was written;
* ``bad signature``: not signed by the trusted key (altered and re-hashed, or signed
  by another key);
* ``sequence gap``: ``seq`` is not one more than the entry before it (removed entries);
* ``chain broken``: ``prev`` does not name the entry before it (removed, reordered or
  replaced entries);
* ``unsigned after signing started``: an entry without ``sig`` after a signed one;
* ``not a valid audit entry``: an unparseable line that is not a torn tail.

A **torn tail** is a line a power cut cut short: unparseable, and either the last line
or followed by an entry that chains onto the last whole entry before it (the writer
keeps appending after it). It is reported in ``torn``, never as tampering: nothing
recorded before it is missing. Entries before the first signed one are **unsigned
(legacy)**: written by software from before signing, or opening a log before the box
had an identity (the first entry after a factory reset). The first signed entry's
hash covers them through ``prev``, so they cannot be changed afterwards, but nothing
proves who wrote them; a log with no signed entry at all is never "verified".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature

from recorder.evidence.segfile import canonical

GENESIS = "0" * 64
BOX_DOMAIN = b"linetap-audit-v1\n"
UPSTREAM_DOMAIN = b"linetap-uaudit-v1\n"

HASH_MISMATCH = "hash mismatch"
BAD_SIGNATURE = "bad signature"
SEQ_GAP = "sequence gap"
CHAIN_BROKEN = "chain broken"
UNSIGNED_LATE = "unsigned after signing started"
NOT_ENTRY = "not a valid audit entry"
TORN = "torn tail"

# Report.status values and the exit codes of `linetap audit --verify` and
# `linetap upstream audit --verify` (the same as `verify`/`export`: 3 = unverifiable).
VERIFIED, BROKEN, UNVERIFIABLE, UNSIGNED, EMPTY = (
    "verified", "broken", "unverifiable", "unsigned (legacy)", "empty")
EXIT = {VERIFIED: 0, EMPTY: 0, BROKEN: 1, UNVERIFIABLE: 3, UNSIGNED: 3}


def entry_hash(entry: dict) -> str:
    """Hex sha256 of the canonical JSON of ``entry`` without ``hash`` and ``sig``."""
    return hashlib.sha256(canonical({k: v for k, v in entry.items()
                                     if k not in ("hash", "sig")})).hexdigest()


def sign(key, hash_hex: str, domain: bytes) -> str:
    """Hex Ed25519 signature (128 hex digits) of ``domain + bytes.fromhex(hash_hex)``."""
    return key.sign(domain + bytes.fromhex(hash_hex)).hex()


def signature_ok(public_key, hash_hex: str, sig_hex: str, domain: bytes) -> bool:
    """Does ``sig_hex`` verify for ``hash_hex`` under ``public_key``? Never raises."""
    try:
        public_key.verify(bytes.fromhex(sig_hex), domain + bytes.fromhex(hash_hex))
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


@dataclass(frozen=True)
class Link:
    """One entry as read back. ``where`` names it for people ("line 7 (seq 6)");
    ``entry`` is None for a line that did not parse (a torn tail or garbage)."""

    where: str
    entry: dict | None
    computed: str | None = None       # the recomputed hash (None: compute from entry)


@dataclass(frozen=True)
class Finding:
    where: str
    seq: int | None
    reasons: tuple[str, ...]
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {', '.join(self.reasons)}" + \
            (f" ({self.detail})" if self.detail else "")


@dataclass
class Report:
    entries: int = 0                  # whole entries read
    signed: int = 0                   # entries with a signature that verified
    unsigned_legacy: int = 0          # entries before the first signed one
    unchecked: int = 0                # signed entries not checked: no trusted key
    problems: list[Finding] = field(default_factory=list)
    torn: list[Finding] = field(default_factory=list)
    head: tuple[int, str] = (0, GENESIS)     # (seq, hash) of the last whole entry

    @property
    def status(self) -> str:
        if self.problems:
            return BROKEN
        if self.entries == 0:
            return EMPTY
        if self.unchecked:
            return UNVERIFIABLE
        if self.signed == 0:
            return UNSIGNED
        return VERIFIED

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]

    @property
    def first_bad(self) -> Finding | None:
        return self.problems[0] if self.problems else None

    def as_dict(self) -> dict:
        return {"status": self.status, "entries": self.entries, "signed": self.signed,
                "unsigned_legacy": self.unsigned_legacy, "unchecked": self.unchecked,
                "first_bad": str(self.first_bad) if self.first_bad else None,
                "problems": [str(p) for p in self.problems],
                "torn": [str(t) for t in self.torn],
                "head": {"seq": self.head[0], "hash": self.head[1]}}


def check(links, public_key, domain: bytes, *, start: tuple[int, str] = (1, GENESIS)
          ) -> Report:
    """Check entries in log order against ``public_key`` (trusted; None: signatures
    cannot be checked). ``start`` is the (seq, prev) the first entry must have. Pure."""
    r = Report()
    expect, prev = start
    started = False
    torn: list[Link] = []
    for ln in links:
        e = ln.entry
        if e is None:
            torn.append(ln)
            continue
        seq, claimed = e.get("seq"), e.get("hash")
        if torn:
            # Torn lines are benign only if this entry carries on from the last whole one.
            fine = seq == expect and e.get("prev") == prev
            for t in torn:
                (r.torn if fine else r.problems).append(Finding(
                    t.where, None, (TORN,) if fine else (NOT_ENTRY,),
                    "a power cut cut this line short; nothing before it is missing"
                    if fine else "an unreadable line in the middle of the log"))
            torn = []
        r.entries += 1
        reasons, detail = [], ""
        computed = ln.computed or entry_hash(e)
        if computed != claimed:
            reasons.append(HASH_MISMATCH)
        if seq != expect:
            reasons.append(SEQ_GAP)
            detail = f"seq {seq} where {expect} was expected"
        if e.get("prev") != prev:
            reasons.append(CHAIN_BROKEN)
        sig = e.get("sig")
        if e.get("signer") and not sig:
            # Names a signer but carries no signature: stripped, not legacy (legacy
            # entries never had a signer).
            started = True
            reasons.append(BAD_SIGNATURE)
            detail = detail or "signature missing"
        elif sig:
            started = True
            if public_key is None:
                r.unchecked += 1
            elif isinstance(claimed, str) and signature_ok(public_key, claimed, sig, domain):
                r.signed += 1
            else:
                reasons.append(BAD_SIGNATURE)
        elif started:
            reasons.append(UNSIGNED_LATE)
        else:
            r.unsigned_legacy += 1
        if reasons:
            r.problems.append(Finding(ln.where, seq if isinstance(seq, int) else None,
                                      tuple(reasons), detail))
        prev = claimed if isinstance(claimed, str) else prev
        expect = (seq if isinstance(seq, int) else expect) + 1
        r.head = (expect - 1, prev)
    r.torn += [Finding(t.where, None, (TORN,), "a power cut cut the last line short")
               for t in torn]
    return r
