"""The plaintext scan's false positives and speed, over the files tests and campaigns leave.

Scans every regular file under the folders given (a pytest ``--basetemp``, a campaign's
``--keep`` folder) with :func:`tests.support.plaintext.plaintext_in`. Files that hold an
audio container (WAV, FLAC, Ogg: the scenarios' inputs, exports) are plaintext by
design and are counted apart; every other file (sealed segments and journals, SQLite
files and their WAL, logs, JSON, keys, certificates, configs) should give no finding,
and each one that does is printed: a false positive, unless it really is raw PCM.

    .venv/bin/python -m bench.plaintext_scan FOLDER [FOLDER ...]

The last line is JSON: ``files``, ``bytes``, ``containers`` (files with an audio
container), ``tone_findings`` (other files where a tone was found), ``mb_per_s`` (scan
speed over all bytes), and ``ratio`` = ``tone_findings / files`` (0 is the goal).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

from tests.support.plaintext import PLAINTEXT_ANYWHERE, tone_in_pcm


def kind(p: Path) -> str:
    """A label for the summary: the file's suffix, or its name for suffixless files."""
    return p.suffix if 0 < len(p.suffix) <= 8 else (p.name if "." not in p.name
                                                     else "other")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", type=Path)
    a = ap.parse_args()
    files = total = containers = 0
    findings, kinds = [], Counter()
    t0 = time.perf_counter()
    for folder in a.folders:
        for p in sorted(folder.rglob("*")):
            try:
                if not p.is_file() or p.is_symlink():
                    continue
                data = p.read_bytes()
            except OSError:
                continue
            files += 1
            total += len(data)
            kinds[kind(p)] += 1
            if PLAINTEXT_ANYWHERE.search(data):
                containers += 1
                continue
            at = tone_in_pcm(data)
            if at is not None:
                findings.append((p, at))
                print(f"tone found: {p} at byte {at} ({len(data)} bytes)")
    secs = time.perf_counter() - t0
    print(f"{files} files, {total / 1e6:.1f} MB in {secs:.1f} s; {containers} with an audio "
          f"container (plaintext by design), {len(findings)} other files with a tone")
    print("kinds:", ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    print(json.dumps({"bench": "plaintext_scan", "files": files, "bytes": total,
                      "containers": containers, "tone_findings": len(findings),
                      "mb_per_s": round(total / 1e6 / secs, 1) if secs else None,
                      "ratio": round(len(findings) / files, 6) if files else 0.0}))


if __name__ == "__main__":
    main()
