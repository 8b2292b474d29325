"""Test helpers for provisioning: box config, reply decoding, fake recorder, pty cable."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import tty
from pathlib import Path

from provisioning import protocol
from provisioning.dispatcher import Dispatcher


def box_config(etc: Path, data: Path, **extra) -> str:
    """A valid box config whose key paths all live under ``etc`` and ``data``."""
    text = f"""
[device]
id = "lt-test0001"
data_dir = "{data}"
site = "surgery-12"
hardware = "sim"

[recording]
public_key = "{etc}/practice.pub"

[sync]
enabled = {str(extra.get("sync", False)).lower()}
host = "broker.example.net"
ca = "{etc}/broker-ca.pem"
cert = "{data}/keys/device-cert.pem"
key = "{data}/keys/device-tls.key"
command_key = "{etc}/upstream-command.pub"
"""
    return text




def reply(frame: bytes) -> tuple[int, int, dict]:
    (ev,) = protocol.FrameParser().feed(frame)
    assert isinstance(ev, protocol.Frame)
    return ev.type, ev.seq, ev.json()


def call(d: Dispatcher, cmd: str, seq: int = 1, **args) -> dict:
    """One request through the dispatcher; returns the decoded reply object."""
    return reply(d.handle_request(seq, {"cmd": cmd, "args": args}))[2]


class FakeRecorder:
    """A fake control socket speaking the recorder's JSON-lines protocol."""

    def __init__(self, path: Path, lines=2):
        self.path = path
        self.requests: list[dict] = []
        self.lines = lines
        self.announce_reply = {"ok": True, "delivered": False, "link": "offline"}
        self.alarms: dict = {}
        self.sync = {"link": "offline", "detail": "broker unreachable"}
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(4)
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="fake-recorder", daemon=True)
        self.thread.start()

    def _answer(self, req: dict) -> dict:
        if req.get("cmd") == "status":
            return {"ok": True, "alarms": self.alarms, "sync": self.sync, "lines": [
                {"line": i, "hook": "off" if i == 0 else "on", "ringing": i == 1,
                 "level_dbfs": -40.0 - i, "state": "idle",
                 "call": "C000-L0-abc123" if i == 0 else None}
                for i in range(self.lines)]}
        if req.get("cmd") == "tone":
            if req.get("line", 0) >= self.lines:
                return {"ok": False, "error": "no such line"}
            return {"ok": True, "captured_dbfs": req["dbfs"] - 6.0}
        if req.get("cmd") == "announce":
            return self.announce_reply
        return {"ok": False, "error": "unknown cmd"}

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                buf = b""
                while b"\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                req = json.loads(buf.split(b"\n")[0])
                self.requests.append(req)
                conn.sendall(json.dumps(self._answer(req)).encode() + b"\n")

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()




class PtyCable:
    """Two pty pairs joined by a relay thread: a USB cable with a pluggable cut.

    Each end is a pty slave opened by path with pyserial, as the real ttyGS0 and the
    laptop's ttyACM0 are. Setting ``cut`` drops every byte in both directions.
    """

    def __init__(self):
        self.m1, self.s1 = os.openpty()
        self.m2, self.s2 = os.openpty()
        for fd in (self.s1, self.s2):
            tty.setraw(fd)
        self.laptop_path = os.ttyname(self.s1)
        self.box_path = os.ttyname(self.s2)
        self.stop = threading.Event()
        self.cut = threading.Event()
        self.bytes_to_box = 0
        self.cut_after_to_box: int | None = None
        self.thread = threading.Thread(target=self._relay, name="pty-cable", daemon=True)
        self.thread.start()

    def _relay(self):
        while not self.stop.is_set():
            r, _, _ = select.select([self.m1, self.m2], [], [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    continue
                if fd == self.m1:
                    if self.cut_after_to_box is not None and \
                            self.bytes_to_box + len(data) > self.cut_after_to_box:
                        keep = max(0, self.cut_after_to_box - self.bytes_to_box)
                        data = data[:keep]
                        self.cut.set()
                        self.cut_after_to_box = None
                        if data:
                            os.write(self.m2, data)
                        continue
                    self.bytes_to_box += len(data)
                if self.cut.is_set():
                    continue
                os.write(self.m2 if fd == self.m1 else self.m1, data)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for fd in (self.m1, self.s1, self.m2, self.s2):
            os.close(fd)


