"""Phone numbers and caller names on a disk that should hold them only sealed: the scan
the privacy tests share (beside :mod:`tests.support.plaintext`, which looks for audio).

Every byte of every file is read. A number is looked for in every form a program might
write it: its national significant digits (which every form contains: ``0...``,
``+44...``, ``0044...``) with any spacing or punctuation between the digits, in ASCII or
UTF-8 and in UTF-16 (little and big endian), and as a 64-bit integer. A name is looked
for case-insensitively with any run of spaces, in the same encodings.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

#: What a writer may put between the digits of a number: "01632 960 123",
#: "+44 (0)1632-960123", "0163.296.0123".
_SEP = r"[\s().\-/]{0,3}"


#: The two UTF-16 byte orders: (one character, one separator character).
_UNITS = (("{c}\\x00", r"[\s().\-/]\x00"), ("\\x00{c}", r"\x00[\s().\-/]"))


def number_patterns(number: str) -> list[re.Pattern]:
    """Byte patterns that find ``number`` (``0...``, ``+44...`` or ``0044...``, spaced or
    not) written by any program: see the module docstring."""
    # The national significant number, which every form contains (self-contained, so
    # that the scan does not trust the normalising code it is checking).
    digits = "".join(c for c in number if c.isdigit())
    nsn = digits[4:] if digits.startswith("0044") else digits[2:] \
        if number.lstrip().startswith("+44") else digits.lstrip("0")
    if len(nsn) < 6:
        raise ValueError(f"{number!r} is too short to scan for without false alarms")
    out = [re.compile(_SEP.join(nsn).encode())]
    for unit, sep in _UNITS:
        out.append(re.compile(f"(?:{sep}){{0,3}}".join(unit.format(c=d) for d in nsn)
                              .encode()))
    for fmt in ("<q", ">q"):
        out.append(re.compile(re.escape(struct.pack(fmt, int(nsn)))))
    return out


def name_patterns(name: str) -> list[re.Pattern]:
    """Byte patterns that find a caller's ``name``, any case, any spacing."""
    words = name.split()
    out = [re.compile(rb"\s+".join(re.escape(w.encode()) for w in words), re.I)]
    for unit, sep in _UNITS:
        space = sep.replace("[\\s().\\-/]", "\\s")
        parts = ["".join(unit.format(c=re.escape(c)) for c in w) for w in words]
        out.append(re.compile(f"(?:{space})+".join(parts).encode(), re.I))
    return out


@dataclass(frozen=True)
class Trace:
    path: Path
    what: str          # the number or name found
    offset: int
    context: bytes     # the bytes around it, for the failure message


def personal_traces(root: Path, numbers=(), names=(), skip=()) -> list[Trace]:
    """Every place under ``root`` where one of ``numbers`` or ``names`` is written in any
    form (module docstring). ``skip``: files not to read (exports, say)."""
    pats = [(n, p) for n in numbers for p in number_patterns(n)]
    pats += [(n, p) for n in names for p in name_patterns(n)]
    skip = {Path(s).resolve() for s in skip}
    out = []
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.resolve() in skip:
            continue
        data = path.read_bytes()
        for what, pat in pats:
            for m in pat.finditer(data):
                out.append(Trace(path, what, m.start(),
                                 data[max(0, m.start() - 24):m.end() + 24]))
    return out


#: A masked number as recorder.privacy.mask_number writes it: digits, stars, digits.
MASKED = re.compile(rb"(\+?\d*)(\*{2,})(\d*)")


def masked_forms(data: bytes) -> list[tuple[bytes, bytes]]:
    """(leading, trailing) digits of every masked number in ``data``."""
    return [(m.group(1), m.group(3)) for m in MASKED.finditer(data)]
