"""The bench recipe in docs/provisioning.md, run exactly as documented.

The block after ``<!-- bench-recipe -->`` is extracted verbatim and run with ``bash -e``
in an empty folder, with this checkout's ``linetap``, ``linetap-provision`` and
``python3`` first on the PATH: a fresh box provisioned over a pty pair, then a new
practice key refused without a token and accepted with one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

# Slow (`make test-fast` leaves it out): the bench recipe end to end.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "provisioning.md"


def recipe() -> str:
    text = DOC.read_text(encoding="utf-8")
    after = text.split("<!-- bench-recipe -->\n", 1)[1]
    assert after.startswith("```sh\n")
    return after[len("```sh\n"):].split("\n```\n", 1)[0] + "\n"


def test_bench_recipe_runs_as_documented(tmp_path):
    script = recipe()
    assert "apply site/site.toml" in script and "authorise" in script
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               XDG_STATE_HOME=str(tmp_path / "laptop-state"))
    proc = subprocess.Popen(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)   # the agent and cable if it stopped early
        except ProcessLookupError:
            pass
    log = (tmp_path / "agent.log").read_text() if (tmp_path / "agent.log").exists() else ""
    assert proc.returncode == 0, out + "\n--- agent.log ---\n" + log
    # First apply on the fresh box, then the refusal, then the apply with the token.
    assert out.count("\ndone\n") == 2, out
    assert "box refused (authorisation_required)" in out
    assert "token accepted for practice_key" in out
    assert (tmp_path / "etc" / "practice.pub").read_bytes() == \
        (tmp_path / "site" / "practice.pub").read_bytes()
    assert not (tmp_path / "laptop.tty").exists()       # the cable cleaned up
