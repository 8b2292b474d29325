"""The pause button's numbered edges, as the recorder hands them to the agent."""

from __future__ import annotations

import threading

import pytest

from recorder.runtime.button_edges import ButtonEdges, EdgeReport


def edges_after(presses: list[bool], keep: int = 256) -> ButtonEdges:
    b = ButtonEdges(keep=keep)
    for p in presses:
        b.record(p)
    return b


@pytest.mark.parametrize("presses, after, want", [
    # nothing yet: the state only
    ([], None, EdgeReport(0, False, ())),
    # the state only, even with edges (the first request of a watch)
    ([True, False, True], None, EdgeReport(3, True, ())),
    # every edge after the number asked for, oldest first
    ([True, False, True], 1, EdgeReport(3, True, ((2, False), (3, True)))),
    ([True, False], 2, EdgeReport(2, False, ())),
    # a repeat of the state is no edge
    ([True, True, False, False], 0, EdgeReport(2, False, ((1, True), (2, False)))),
    # more than kept since: say so (the state is the truth)
    ([True, False, True, False], 0, EdgeReport(4, False, ((3, True), (4, False)), True)),
    # a number from before the recorder restarted
    ([True], 7, EdgeReport(1, True, (), True)),
])
def test_since(presses, after, want):
    assert edges_after(presses, keep=2).since(after) == want


def test_a_waiting_request_gets_the_edge_that_comes():
    b = ButtonEdges()
    seen = threading.Event()

    def press():
        seen.wait(5)
        b.record(True)

    t = threading.Thread(target=press)
    t.start()
    seen.set()
    # Up to the cap, 0.5 s: the press may come before or during the wait; either way
    # it is in the answer.
    r = b.since(0, wait_s=0.5)
    t.join()
    if not r.edges:
        r = b.since(0)
    assert r.edges == ((1, True),) and r.pressed


def test_as_dict_is_the_wire_shape():
    assert edges_after([True]).since(0).as_dict() == \
        {"seq": 1, "pressed": True, "edges": [[1, True]], "missed": False}
