"""docs/operations.md, run as written: every ``sh`` block, in order, in one bash on a
fresh folder, inside a private network namespace (so the documented port 8883 is free
and nothing leaves loopback). Real mosquitto, real ingest workers, real SQLite."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Slow (`make test-fast` leaves it out): runs docs/operations.md in a namespace: about 66 s.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "operations.md"


def doc_commands(text: str) -> str:
    """The ``sh`` fenced blocks of ``text``, in order (``console`` blocks are not run)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M)
    return "\n".join(blocks)


def test_doc_blocks_are_extracted():
    script = doc_commands(DOC.read_text())
    assert script.startswith("linetap upstream init upstream")
    assert "systemctl" not in script               # production-only blocks are console
    assert script.index(" pin ") < script.index("--until-synced")


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None
                    or shutil.which("mosquitto") is None and
                    not Path("/usr/sbin/mosquitto").exists(),
                    reason="needs unshare, ip and mosquitto")
def test_operations_doc_runs_as_written():
    script = doc_commands(DOC.read_text())
    d = Path(tempfile.mkdtemp(prefix="linetap-ops-"))
    os.chmod(d, 0o755)            # the mosquitto user walks to its files
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    ns = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    body = "set -euo pipefail\nip link set lo up\n" + script
    p = subprocess.Popen([*ns, "bash", "-c", body], cwd=d, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=400)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        raise AssertionError("doc script timed out:\n" + out[-4000:]) from None
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)      # our own group: anything left behind
        except ProcessLookupError:
            pass
    try:
        assert p.returncode == 0, out[-6000:] + "\n--- serve.log ---\n" + \
            (d / "serve.log").read_text(errors="replace")[-3000:]
        assert "20 passed, 0 failed" in out or re.search(r"\d+ passed, 0 failed", out)
        assert "synced: every segment and manifest acked upstream" in out
        listed = [ln for ln in out.splitlines() if ln.startswith("surgery-1")]
        assert len(listed) == 2 and all("complete" in ln for ln in listed), out
        wavs = list((d / "exported").rglob("*.wav"))
        assert len(wavs) == 2 and all(w.stat().st_size > 1000 for w in wavs)
        assert "0 failed verification" in out
        reg = json.loads((d / "upstream/pki/enrolment.json").read_text())
        assert reg["devices"]["lt-demo-1"]["state"] == "revoked"
    finally:
        shutil.rmtree(d, ignore_errors=True)
