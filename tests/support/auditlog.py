"""What a writer of an audit log does to forge it: re-chain entries after an edit,
signing with a key of its own if it has one (tests of recorder/evidence/auditchain.py
and of the upstream's copy of a box's log)."""

from __future__ import annotations

from recorder.evidence import auditchain
from recorder.evidence.auditchain import GENESIS


def rechain(entries: list[dict], key=None, frm: int = 0, renumber: bool = False,
            domain: bytes = auditchain.BOX_DOMAIN) -> list[dict]:
    """Recompute ``prev``, ``hash`` (and ``sig`` with ``key``, else none) of
    ``entries[frm:]``, in place; ``renumber`` also rewrites ``seq`` as 1, 2, ..."""
    prev = entries[frm - 1]["hash"] if frm else GENESIS
    for i, e in enumerate(entries[frm:], frm):
        if renumber:
            e["seq"] = i + 1
        e["prev"] = prev
        e.pop("sig", None)
        e["hash"] = auditchain.entry_hash(e)
        if key is not None:
            e["sig"] = auditchain.sign(key, e["hash"], domain)
        prev = e["hash"]
    return entries
