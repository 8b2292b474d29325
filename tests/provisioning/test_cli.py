"""The real command lines: `linetap provision-agent` in a subprocess on one end of the pty
cable, `linetap-provision` (client.cli_main) on the other.

The agent's options follow a "--": recorder/cli/__init__.py's REMAINDER argument does not accept a
leading option (``linetap provision-agent --port X`` is rejected by argparse).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from provisioning import client
from tests.provisioning.provhelpers import box_config


@pytest.fixture
def agent_process(tmp_path, cable):
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    (etc / "linetap.toml").write_text(box_config(etc, data))
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from recorder.cli import main; sys.exit(main())",
         "provision-agent", "--", "--port", cable.box_path, "--config", str(etc / "linetap.toml"),
         "--data-dir", str(data), "--presence", "denied"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # pyserial flushes the port's input when it opens it: wait for the agent to say it
    # is serving before the client sends anything.
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "serving on" in line:
            break
    else:
        pytest.fail("agent exited: " + "".join(lines))
    yield proc
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_cli_hello_and_refusal(agent_process, cable, capsys):
    port = ["--port", cable.laptop_path, "--timeout", "30"]
    assert client.cli_main([*port, "--json", "hello"]) == 0
    hello = json.loads(capsys.readouterr().out)
    assert hello["device_id"] == "lt-test0001"
    assert hello["provisioning_mode"]["active"] is False
    assert client.cli_main([*port, "reboot"]) == 2
    err = capsys.readouterr().err
    assert "presence_required" in err and "pause button" in err
    # Live line state is call activity: refused without presence, before the recorder
    # is even asked.
    assert client.cli_main([*port, "line-test"]) == 2
    assert "presence_required" in capsys.readouterr().err
