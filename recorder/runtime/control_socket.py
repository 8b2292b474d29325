"""The daemon's local control socket, used by the provisioning agent and `doctor`.

A Unix stream socket at ``DATA_DIR/run/control.sock`` (mode 0660). One JSON object per
line in, one per line out:

* ``{"cmd": "status"}`` -> ``{"ok": true, ...}`` with the same content as ``status.json``.
* ``{"cmd": "tone", "line": 0, "hz": 1000, "seconds": 1.0, "dbfs": -12}`` -> plays the
  tone into the line and answers ``{"ok": true, "captured_dbfs": -14.2}``, the level of
  the same span as captured (the audio test of provisioning).
* ``{"cmd": "announce", "event": "factory_reset", "detail": {...}}`` -> publishes the
  notice upstream (``report``, QoS 1) and answers ``{"ok": true, "delivered": bool,
  "link": ...}`` once the broker has acknowledged it (or why not).
* ``{"cmd": "button", "after": N, "wait_s": 0.5}`` -> ``{"ok": true, "seq": M,
  "pressed": bool, "edges": [[seq, pressed], ...], "missed": bool}``: the pause button's
  edges numbered above ``N`` (``null``: none, the state only), waiting up to ``wait_s``
  (at most 0.5 s) for one. The provisioning agent's presence check reads the button
  this way while the recorder owns the GPIO lines (:mod:`.button_edges`).
* anything else -> ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading

import numpy as np

from recorder.calls.announce import tone_clip
from recorder.runtime.button_edges import MAX_WAIT_S
from recorder.threads import name_os_thread

log = logging.getLogger(__name__)
SOCKET = "run/control.sock"
MAX_REQUEST = 4096


class ControlServer(threading.Thread):
    def __init__(self, daemon):
        super().__init__(name="control", daemon=True)
        self.d = daemon
        self.path = daemon.data_dir / SOCKET
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o660)
        self.sock.listen(4)
        self.sock.settimeout(0.5)

    def run(self) -> None:
        name_os_thread(self.name)
        while not self.d.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            with conn:
                try:
                    conn.settimeout(30)
                    f = conn.makefile("rwb")
                    line = f.readline(MAX_REQUEST)
                    f.write(json.dumps(self.handle(line), default=str).encode() + b"\n")
                    f.flush()
                except Exception:
                    log.exception("control request failed")
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def handle(self, raw: bytes) -> dict:
        try:
            req = json.loads(raw)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except ValueError:
            return {"ok": False, "error": "request must be one JSON object on one line"}
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, **self.d.status()}
        if cmd == "tone":
            return self.tone(req)
        if cmd == "button":
            return self.button(req)
        if cmd == "announce":
            # A notice the upstream must hold before the box acts (factory reset).
            up = getattr(self.d, "uploader", None)
            if up is None:
                return {"ok": True, "delivered": False, "link": "sync not running"}
            return {"ok": True, **up.announce(str(req.get("event")), req.get("detail") or {})}
        return {"ok": False, "error": f"unknown cmd {cmd!r}"}

    def button(self, req: dict) -> dict:
        edges = getattr(self.d, "button_edges", None)
        if edges is None:
            return {"ok": False, "error": "the pause button is not open yet"}
        after, wait_s = req.get("after"), req.get("wait_s", 0.0)
        if (after is not None and (type(after) is not int or after < 0)) \
                or type(wait_s) not in (int, float) or not 0 <= wait_s <= MAX_WAIT_S:
            return {"ok": False, "error": "after must be null or a whole number >= 0, and "
                                          f"wait_s a number of seconds 0..{MAX_WAIT_S:g}"}
        return {"ok": True, **edges.since(after, wait_s).as_dict()}

    def tone(self, req: dict) -> dict:
        d = self.d
        try:
            line = int(req.get("line", 0))
            hz, secs = float(req.get("hz", 1000.0)), float(req.get("seconds", 1.0))
            dbfs = float(req.get("dbfs", -12.0))
        except (TypeError, ValueError):
            return {"ok": False, "error": "line, hz, seconds and dbfs must be numbers"}
        if not (0 <= line < d.lines and 100 <= hz <= d.rate / 2 - 100 and 0.1 <= secs <= 10
                and -60 <= dbfs <= 0):
            return {"ok": False, "error": "out of range: line 0..lines-1, hz 100..rate/2-100, "
                                          "seconds 0.1..10, dbfs -60..0"}
        if d.processor.line[line].call is not None:
            return {"ok": False, "error": f"line {line} has a call in progress"}
        clip = tone_clip(hz, secs, d.rate, dbfs, "test")
        start = d.announcer.schedule(line, clip, d.announcer.rendered)
        end = start + clip.frames
        if not d.ring.wait_for(end, timeout=secs + 10):
            return {"ok": False, "error": "capture did not reach the end of the tone"}
        x = d.ring.read(line, start, end).astype(np.float64) / 32768.0
        rms = float(np.sqrt(np.mean(x * x))) if len(x) else 0.0
        level = 20 * np.log10(max(rms * np.sqrt(2), 1e-9))
        return {"ok": True, "played_dbfs": dbfs, "captured_dbfs": round(level, 1)}
