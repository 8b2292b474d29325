"""Cost of evidence per call-hour: chaining and signing on the box, verifying anywhere.

A call-hour is 360 segments of 10 s. Signing = SHA-256 of each sealed segment, the chain,
and the signed, sealed manifest. Verifying = what `linetap verify` does: read and hash
every segment file, check the manifest signature, chain and list. The baseline, in the
same run, is FLAC-encoding that hour.

    .venv/bin/python -m bench.evidence
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.evidence import chain as evidence
from recorder.evidence import codec, keys, segfile
from recorder.evidence.keys import raw_public
from recorder.evidence.verify import found_files

SEGMENTS = 360


def main() -> None:
    rng = np.random.default_rng(0)
    t = np.arange(80000) / 8000
    x = np.sin(2 * np.pi * 300 * t) * 0.1 + rng.standard_normal(80000) * 0.02
    pcm = np.clip(np.rint(x * 32768), -32768, 32767).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        _priv, pub = keys.practice_keygen(Path(tmp) / "p.key")
        pk = keys.load_practice_public(pub)
        ident = ed25519.Ed25519PrivateKey.generate()
        t0 = time.process_time()
        flac = [codec.encode(pcm, 8000) for _ in range(SEGMENTS)]
        t_flac = time.process_time() - t0
        files = [segfile.seal(1, {"v": 1, "call": "c", "seq": i,
                                  "suite": segfile.suite_ids()}, f, pk)
                 for i, f in enumerate(flac)]
        call_dir = Path(tmp) / "c"
        call_dir.mkdir()
        for i, b in enumerate(files):
            (call_dir / f"{i:05d}.seg").write_bytes(b)
        # signing: hash + chain + manifest
        t0 = time.process_time()
        chain = evidence.chain_init("dev", "c")
        shas = []
        for i, b in enumerate(files):
            s = hashlib.sha256(b).digest()
            shas.append(s)
            chain = evidence.chain_next(chain, i, s)
        header = {"v": 1, "kind": "manifest", "device": "dev", "call": "c",
                  "chain_head": chain.hex(),
                  "segments": [{"seq": i, "sha256": s.hex(), "size": len(files[i])}
                               for i, s in enumerate(shas)],
                  "signer": raw_public(ident.public_key()).hex(),
                  "suite": segfile.suite_ids()}
        manifest = segfile.seal(2, header, b"{}", pk, signer=ident)
        t_sign = time.process_time() - t0
        # verifying: read every file, hash, check signature, chain and list
        t0 = time.process_time()
        h, problems = evidence.check_manifest(manifest, "c", "dev", ident.public_key())
        problems += evidence.diagnose(evidence.expected_from_manifest(h),
                                      found_files(call_dir))
        t_verify = time.process_time() - t0
        assert not problems, problems
    mb = sum(len(b) for b in files) / 1e6
    print(f"one call-hour: {SEGMENTS} segments, {mb:.1f} MB sealed")
    print(f"  FLAC encode (baseline)    {t_flac * 1000:8.1f} ms CPU")
    print(f"  sign (hash, chain, seal)  {t_sign * 1000:8.1f} ms CPU")
    print(f"  verify (read, hash, sig)  {t_verify * 1000:8.1f} ms CPU")
    print(json.dumps({"bench": "evidence", "sign_ms_per_call_hour": round(t_sign * 1000, 1),
                      "verify_ms_per_call_hour": round(t_verify * 1000, 1),
                      "flac_ms_per_call_hour": round(t_flac * 1000, 1),
                      "ratio": round((t_sign + t_verify) / t_flac, 3)}))


if __name__ == "__main__":
    main()
