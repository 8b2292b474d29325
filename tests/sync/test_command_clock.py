"""Signed commands against a wrong or stepping clock: a command from the future is refused,
replay protection survives clock steps, and an unsynchronised clock judges expiry
conservatively (``sync.signed_commands.judge_time``, table-tested, then the real nonce table)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from recorder.errors import CommandRejected
from recorder.storage.store import Store
from sync import signed_commands as commands
from sync.signed_commands import MAX_SKEW_S, UNSYNC_MARGIN_S, BoxClock, judge_time

KEY = ed25519.Ed25519PrivateKey.generate()
PUB = KEY.public_key()
T = 1_800_000_000.0          # an arbitrary "true" time, epoch s
DAY = 86400.0
NAN = float("nan")


@pytest.mark.parametrize("issued, expires, clock, reason", [
    # synchronised clock
    (T, T + 7 * DAY, BoxClock(T, True), None),
    (T + MAX_SKEW_S, T + 7 * DAY, BoxClock(T, True), None),             # skew allowed
    (T + MAX_SKEW_S + 1, T + 7 * DAY, BoxClock(T, True), "in the future"),
    (T + 30 * DAY, T + 31 * DAY, BoxClock(T, True), "in the future"),   # pre-dated
    (T - 8 * DAY, T - DAY, BoxClock(T, True), "expired"),
    (T - 7 * DAY, T, BoxClock(T, True), "expired"),                     # expires == now
    (T - 2 * DAY, T + 1, BoxClock(T, True), None),                      # 1 s left
    # the box clock stepped back: the floor (upstream-signed time) still expires it
    (T - 8 * DAY, T - DAY, BoxClock(T - 30 * DAY, True, floor=T), "expired"),
    (T - 8 * DAY, T - DAY, BoxClock(T - 30 * DAY, True, floor=0.0), "in the future"),
    # the box clock stepped forward: judged by the box clock (it cannot know better)
    (T, T + 7 * DAY, BoxClock(T + 365 * DAY, True, floor=T), "expired"),
    # unsynchronised clock: more than the margin must be left
    (T, T + 7 * DAY, BoxClock(T, False), None),
    (T - 6.5 * DAY, T + DAY / 2, BoxClock(T, False), "not synchronised"),
    (T - 7 * DAY + 1, T + UNSYNC_MARGIN_S, BoxClock(T, False), "not synchronised"),
    (T - 6 * DAY, T + UNSYNC_MARGIN_S + 1, BoxClock(T, False), None),
    (T - 8 * DAY, T - DAY, BoxClock(T, False), "expired"),
    (T + MAX_SKEW_S + 1, T + 7 * DAY, BoxClock(T, False), "in the future"),
    (T - DAY, T + 6 * DAY, BoxClock(T - 30 * DAY, False, floor=T + 5.5 * DAY),
     "not synchronised"),                                              # floor + margin
    # shape of the times
    (T, T + 31 * DAY, BoxClock(T, True), "lifetime too long"),
    (T, T, BoxClock(T, True), "before it was issued"),
    (T, T - 1, BoxClock(T, True), "before it was issued"),
    (NAN, T + DAY, BoxClock(T, True), "no valid expiry"),
    (T, NAN, BoxClock(T, True), "no valid expiry"),
    (T, float("inf"), BoxClock(T, True), "no valid expiry"),
])
def test_judge_time(issued, expires, clock, reason):
    got = judge_time(issued, expires, clock)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize("expires, floor, purge", [
    (T, T, True), (T - 1, T, True), (T + 1, T, False), (T, 0.0, False)])
def test_purgeable(expires, floor, purge):
    assert commands.purgeable(expires, floor) is purge


def test_verify_refuses_future_issued():
    env = commands.sign(KEY, "hold", "dev-a", call="c", on=True, now=T + 3600)
    with pytest.raises(CommandRejected, match="in the future"):
        commands.verify(env, PUB, "dev-a", now=T)
    assert commands.verify(env, PUB, "dev-a", now=T + 3600)["kind"] == "hold"


def test_verify_unsynchronised_is_conservative():
    env = commands.sign(KEY, "hold", "dev-a", call="c", on=True, now=T, lifetime_s=3600)
    assert commands.verify(env, PUB, "dev-a", now=T + 60)["on"] is True
    with pytest.raises(CommandRejected, match="not synchronised"):
        commands.verify(env, PUB, "dev-a", now=T + 60, synchronised=False)


def _accept(store, env, now, synchronised=True):
    body = commands.verify(env, PUB, "dev-a", now=now, synchronised=synchronised,
                           floor=commands.time_floor(store))
    commands.check_nonce(store, body, now=now)
    return body


def test_forward_step_does_not_purge_nonces(tmp_path):
    """The clock steps ten days ahead (past the first command's expiry) while a second,
    longer-lived command arrives, then is corrected: the first command replayed must
    still be caught as a replay."""
    store = Store(tmp_path)
    first = commands.sign(KEY, "delete", "dev-a", call="c1", now=T)     # 7 days
    _accept(store, first, now=T)
    second = commands.sign(KEY, "hold", "dev-a", call="c2", on=True, now=T + 3600,
                           lifetime_s=20 * DAY)
    _accept(store, second, now=T + 10 * DAY)           # box clock wrongly 10 days ahead
    with pytest.raises(CommandRejected, match="replayed"):
        _accept(store, first, now=T + 7200)            # clock corrected, replay
    assert commands.time_floor(store) == T + 3600


def test_floor_purges_and_expires_old_commands(tmp_path):
    """Nonces are forgotten once the upstream's own signed time passes their expiry; a
    replay is then refused as expired even on a box clock stepped far back."""
    store = Store(tmp_path)
    first = commands.sign(KEY, "delete", "dev-a", call="c1", now=T, lifetime_s=DAY)
    _accept(store, first, now=T)
    later = commands.sign(KEY, "hold", "dev-a", call="c2", on=True, now=T + 2 * DAY)
    _accept(store, later, now=T + 2 * DAY)
    N = store.m.Nonce
    assert N.select().count() == 1                     # the first nonce is purged
    with pytest.raises(CommandRejected, match="expired"):
        _accept(store, first, now=T - 100 * DAY)       # box clock far behind


def test_floor_survives_reopen(tmp_path):
    store = Store(tmp_path)
    _accept(store, commands.sign(KEY, "delete", "dev-a", call="c1", now=T), now=T)
    store.close()
    assert commands.time_floor(Store(tmp_path)) == T
