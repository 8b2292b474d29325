"""The service-thread shape (recorder/threads.py): each thread carries its name into the
kernel, so `ps -L`, `top -H` and the power-cut campaign's starvation measure see it."""

from __future__ import annotations

import sys
import threading

import pytest

from recorder.threads import LoopThread, ServiceThread, name_os_thread


def _comm(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/comm") as f:
        return f.read().strip()


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")


def test_loop_and_service_threads_are_named_in_the_kernel():
    stop = threading.Event()
    seen: dict[str, str] = {}

    def body():
        seen["writer"] = _comm(threading.get_native_id())

    def tick():
        seen["house"] = _comm(threading.get_native_id())
        stop.set()

    t1 = LoopThread("writer", body, stop)
    t2 = ServiceThread("house", 0.01, tick, stop)
    for t in (t1, t2):
        t.start()
    for t in (t1, t2):
        t.join(10)
    assert seen == {"writer": "writer", "house": "house"}


def test_a_long_name_is_cut_to_what_the_kernel_keeps():
    got = {}

    def body():
        name_os_thread("a-very-long-thread-name")
        got["comm"] = _comm(threading.get_native_id())

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert got["comm"] == "a-very-long-thr"
