"""A call's personal data on the box: caller number, caller name and dialled number.

The box never keeps these in clear (no column, no index, no log line). The store holds
them only as a kind-3 file (:mod:`recorder.evidence.segfile`) in the call row's
``personal`` column: header ``{"v": 1, "kind": "personal", "device", "call", "suite"}``
in clear, and the payload, canonical JSON of :data:`FIELDS`, HPKE-sealed to the
practice public key like a segment. The box cannot open it; ``calls --number`` and
``export`` open it with the practice private key.

A manifest the writer signs while the call is in memory carries the fields themselves
inside its sealed body. One signed without them (crash recovery, a re-sign after a
clock step) carries this sealed file instead, hex in ``personal_sealed``, and
:func:`reveal` puts the fields back when the body is opened (docs/formats.md).
"""

from __future__ import annotations

import json

from recorder.errors import SegmentFormatError
from recorder.evidence import segfile
from recorder.privacy import number_matches

#: The personal fields of a call, in the manifest body and the sealed file.
FIELDS = ("caller_number", "caller_name", "dialled_digits")
#: Manifest body key for the sealed file when the fields themselves were not known.
SEALED_KEY = "personal_sealed"


def fields(caller_number: str | None = None, caller_name: str | None = None,
           dialled_digits: str | None = None) -> dict:
    """The personal fields as the manifest and the sealed file hold them (empty -> None)."""
    return {"caller_number": caller_number or None, "caller_name": caller_name or None,
            "dialled_digits": dialled_digits or None}


def seal(device: str, call_id: str, personal: dict, public_key,
         aead: str = "chacha20poly1305") -> bytes | None:
    """Seal ``personal`` for the row of call ``call_id``; None when every field is empty
    (nothing to hide, and a NULL says so without a seal)."""
    body = {f: personal.get(f) or None for f in FIELDS}
    if not any(body.values()):
        return None
    header = {"v": 1, "kind": "personal", "device": device, "call": call_id,
              "suite": segfile.suite_ids(aead)}
    return segfile.seal(segfile.KIND_PERSONAL, header, segfile.canonical(body), public_key)


def open_sealed(blob: bytes | None, private_key, call_id: str | None = None) -> dict:
    """The fields in a sealed file (all None for None). Raises SegmentFormatError when
    it does not open with ``private_key`` or belongs to another call than ``call_id``."""
    if blob is None:
        return fields()
    p = segfile.parse(bytes(blob), signed=False)
    if p.kind != segfile.KIND_PERSONAL:
        raise SegmentFormatError(f"kind {p.kind} is not a call's personal data")
    if call_id is not None and p.header.get("call") != call_id:
        raise SegmentFormatError(f"personal data of call {p.header.get('call')!r} "
                                 f"stored with call {call_id!r}")
    payload = segfile.open_payload(p, private_key)
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise SegmentFormatError("personal data is not JSON") from exc
    if not isinstance(body, dict):
        raise SegmentFormatError("personal data is not a JSON object")
    return fields(*(body.get(f) for f in FIELDS))


def reveal(body: dict, private_key) -> dict:
    """A manifest body with its ``personal_sealed`` (if any) opened into the fields; the
    body as it is when the sealed file does not open (the fields then stay None)."""
    sealed = body.get(SEALED_KEY)
    if sealed is None:
        return body
    out = {k: v for k, v in body.items() if k != SEALED_KEY}
    try:
        out.update(open_sealed(bytes.fromhex(sealed), private_key, body.get("call_id")))
    except (SegmentFormatError, ValueError, TypeError):
        pass
    return out


def with_number(rows, private_key, number: str) -> tuple[list, int]:
    """The call rows whose sealed personal data names ``number`` (any form
    :func:`recorder.privacy.number_key` accepts); returns (rows, unreadable), where
    ``unreadable`` counts sealed data that did not open with ``private_key``. Costs one
    HPKE open per call that has personal data: the price of keeping none in clear."""
    found, unreadable = [], 0
    for row in rows:
        if row.personal is None:
            continue
        try:
            personal = open_sealed(row.personal, private_key, row.id)
        except SegmentFormatError:
            unreadable += 1
            continue
        if number_matches(personal, number):
            found.append(row)
    return found, unreadable
