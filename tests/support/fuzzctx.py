"""What the hostile-input campaign feeds its parsers: keys, genuine sealed segments, a
valid scenario and config to mutate, and signed commands.

Built once per process by ``python -m bench.campaigns.fuzz`` (and by its atheris driver);
the reproducers of the campaign's findings in ``tests/reliability/test_fuzz_findings.py``
use it to seal and sign inputs exactly as the campaign did.
"""

from __future__ import annotations

import json
from pathlib import Path

DEVICE = "dev-a"


class Ctx:
    def __init__(self, tmp: Path):
        from cryptography.hazmat.primitives.asymmetric import ed25519

        from recorder.evidence import keys
        from recorder.storage.store import Store
        self.tmp = tmp
        priv, pub = keys.practice_keygen(tmp / "practice.key")
        self.practice_priv = keys.load_practice_private(priv)
        self.practice_pub = keys.load_practice_public(pub)
        self.cmd_key = ed25519.Ed25519PrivateKey.generate()
        self.cmd_pub = self.cmd_key.public_key()
        self.store = Store(tmp / "store")
        self.segments = self._real_segments()
        self.scenario = {"rate": 8000, "start": "2026-11-25T09:00:00Z", "duration": 60.0,
                         "lines": 2, "events": [
                             {"at": 1.0, "line": 0, "type": "ring", "until": 3.0},
                             {"at": 1.5, "line": 0, "type": "cli", "number": "01632960123"},
                             {"at": 3.2, "line": 0, "type": "offhook"},
                             {"at": 4.0, "line": 0, "type": "tone", "hz": [350, 440],
                              "duration": 2.0},
                             {"at": 5.0, "line": 0, "type": "dtmf", "digits": "1234#"},
                             {"at": 6.0, "type": "button", "button": "pause", "hold": 0.3},
                             {"at": 7.0, "line": 0, "type": "flash", "duration": 0.2},
                             {"at": 9.0, "line": 0, "type": "onhook"},
                             {"at": 10.0, "line": 1, "type": "offhook"},
                             {"at": 20.0, "line": 1, "type": "onhook"}]}
        self.config_text = (
            "[device]\nid = \"lt-x\"\nsite = \"s1\"\n[audio]\nlines = 2\nrate = 8000\n"
            "[timing]\nhangup_s = 0.5\n[recording]\nsegment_s = 10.0\ncodec = \"flac\"\n"
            "[pause]\nbutton_lines = [0, 1]\n[[line]]\nindex = 0\nlabel = \"Reception\"\n"
            "[sync]\nenabled = true\nhost = \"b\"\nport = 8883\nwindow = 16\n"
            "[retention]\ndays = 90.0\nmin_free_mb = 200\n")

    def _real_segments(self) -> list[bytes]:
        """A few genuine sealed segments (FLAC, Opus, a raw journal record under a content
    key) and a manifest."""
        import numpy as np

        from recorder.evidence import codec, segfile
        out = []
        for cname, n in (("flac", 800), ("opus", 960)):
            pcm = (3000 * np.sin(np.arange(n) / 5)).astype(np.int16)
            payload = codec.encode(pcm, 8000, cname)
            h = {"v": 1, "kind": "segment", "device": DEVICE, "call": "C1", "seq": 0,
                 "first_sample": 0, "samples": n, "rate": 8000, "codec": cname,
                 "suite": segfile.suite_ids(), "start": "2026-11-25T09:00:00.000Z"}
            out.append(segfile.seal(segfile.KIND_SEGMENT, h, payload, self.practice_pub))
        # A journal record: raw PCM under a content key sealed in its header.
        ck = segfile.ContentKey(segfile.suite_ids(), self.practice_pub)
        out.append(ck.seal(dict(h, codec="pcm", samples=400, seq=3),
                           codec.encode((900 * np.cos(np.arange(400) / 7)).astype(np.int16),
                                        8000, "pcm")))
        self.payloads = [codec.encode((1000 * np.ones(400)).astype(np.int16), 8000, "flac")]
        return out

    def seal(self, header: dict, payload: bytes) -> bytes:
        from recorder.evidence import segfile
        return segfile.seal(segfile.KIND_SEGMENT, header, payload, self.practice_pub)

    def sign_body(self, body) -> bytes:
        from recorder.evidence.segfile import canonical
        raw = canonical(body)
        return json.dumps({"body": raw.decode(), "sig": self.cmd_key.sign(raw).hex()}).encode()
