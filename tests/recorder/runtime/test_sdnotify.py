"""sd_notify against a real AF_UNIX datagram socket."""

import os
import socket
import uuid

from recorder.runtime.sdnotify import SdNotifier


def _server(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    return s


def test_unset_is_noop():
    n = SdNotifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.watchdog_interval_s() is None


def test_path_socket(tmp_path):
    path = str(tmp_path / "notify")
    srv = _server(path)
    n = SdNotifier({"NOTIFY_SOCKET": path})
    assert n.ready("capturing 2 lines")
    assert srv.recv(4096) == b"READY=1\nSTATUS=capturing 2 lines"
    n.watchdog()
    assert srv.recv(4096) == b"WATCHDOG=1"
    n.status("two\nlines")
    assert srv.recv(4096) == b"STATUS=two"
    n.stopping()
    assert srv.recv(4096) == b"STOPPING=1"
    n.close()
    srv.close()


def test_abstract_socket():
    name = "linetap-test-" + uuid.uuid4().hex
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind("\0" + name)
    srv.settimeout(5)
    n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
    assert n.watchdog()
    assert srv.recv(4096) == b"WATCHDOG=1"
    srv.close()


def test_missing_socket_does_not_raise(tmp_path):
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert n.ready() is False
    assert n.ready() is False


def test_watchdog_interval():
    pid = str(os.getpid())
    assert SdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s() == 30.0
    assert SdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}).watchdog_interval_s() \
        == 30.0
    assert SdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval_s() \
        is None
    assert SdNotifier({"WATCHDOG_USEC": "junk"}).watchdog_interval_s() is None
    assert SdNotifier({"WATCHDOG_USEC": "0"}).watchdog_interval_s() is None
