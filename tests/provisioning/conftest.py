"""Fixtures: a box in tmp_path, a fake recorder control socket, a pty 'cable'."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from provisioning.dispatcher import AgentEnv, Dispatcher
from provisioning.presence import Presence
from recorder.evidence import keys
from tests.provisioning.provhelpers import FakeRecorder, PtyCable, box_config


@pytest.fixture(autouse=True)
def _session_state(tmp_path, monkeypatch):
    """The client remembers sessions under XDG_STATE_HOME: keep that in tmp_path."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "laptop-state"))


@pytest.fixture
def box(tmp_path):
    """A Dispatcher over a box laid out in tmp_path, with every side effect recorded."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    etc.mkdir()
    data.mkdir()
    config_path = etc / "linetap.toml"
    config_path.write_text(box_config(etc, data))
    keys.ensure_identity(data, first_start=True)
    calls: list = []
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 4 Model B Rev 1.5\0")
    presence = Presence(granted=True, timeout_s=1800)
    env = AgentEnv(config_path=config_path, data_dir=data, presence=presence,
                   set_clock=lambda t: calls.append(("clock", t)),
                   reboot=lambda: calls.append(("reboot",)),
                   restart_recorder=lambda: calls.append(("restart",)) or dict(
                       reset_failed=True, restart="ok", active="active"),
                   stop_recorder=lambda: calls.append(("stop",)),
                   model_path=model, control_timeout_s=5.0)
    return SimpleNamespace(env=env, d=Dispatcher(env), calls=calls, etc=etc, data=data,
                           config_path=config_path, presence=presence, tmp=tmp_path)

@pytest.fixture
def fake_recorder(box):
    from recorder.runtime.control_client import socket_path
    rec = FakeRecorder(socket_path(box.data))
    yield rec
    rec.close()

@pytest.fixture
def cable():
    c = PtyCable()
    yield c
    c.close()



@pytest.fixture
def served(box, cable):
    """The agent serving ``box`` on the box end of ``cable``; yields a client Link."""
    import serial

    from provisioning.agent import Agent
    from provisioning.client import Link

    box_port = serial.Serial(cable.box_path, 115200, timeout=0.05)
    stop = threading.Event()
    agent = Agent(box_port, box.d, stop=stop, frame_timeout_s=0.5)
    t = threading.Thread(target=agent.serve, name="agent", daemon=True)
    t.start()
    laptop = serial.Serial(cable.laptop_path, 115200, timeout=0.05)
    link = Link(laptop, timeout_s=10.0)
    yield SimpleNamespace(link=link, agent=agent, laptop=laptop, box=box, cable=cable)
    stop.set()
    t.join(5)
    assert not t.is_alive(), "agent thread did not stop"
    box_port.close()
    laptop.close()

