"""The drain's fast paths keep their meaning: the uploader never resends what is acked
(its candidate cache is older than the acks), chunks joined in memory store exactly
what the partial/ path stores, and a segment's known sha256 goes into its chunks."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

from sync import protocol
from sync.upstream.ingest import Ingest
from sync.upstream.store import UCall, USegment, is_complete, open_db
from tests.support.syncbox import box_cfg, make_box, practice_keys, upstream_cfg, write_calls


class _Info:
    """paho's MessageInfo as far as the uploader uses it."""

    def __init__(self, published: bool):
        self.published = published

    def is_published(self) -> bool:
        return self.published


class _Client:
    """Records publishes instead of sending them; the broker PUBACKs at once unless
    ``puback`` is False (a slow uplink still carrying them)."""

    def __init__(self, puback: bool = True):
        self.sent, self.infos, self.puback = [], [], puback

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, payload))
        self.infos.append(_Info(self.puback))
        return self.infos[-1]


def test_acked_items_are_not_resent_from_the_cache(tmp_path):
    from sync.uploader import Uploader
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=3, segs=4)
    cfg = box_cfg(box.data_dir, device=box.device, window=4)
    up = Uploader(box.store, cfg, device=box.device, data_dir=box.data_dir)
    up.client = _Client()
    up.connected.set()
    up._next_health = float("inf")
    sent, waiting = [], []
    for i in range(40):
        # Every other tick the cache has expired (REFRESH_S went by) and is read again
        # while items are in flight; in between it is still fresh.
        up._cand_until = 0.0 if i % 2 else float("inf")
        up.tick()
        new = [(t, p) for t, p in up.client.sent if "/seg/" in t or "/man/" in t]
        up.client.sent.clear()
        keys = sorted({(protocol.parse_topic(t).call, protocol.parse_topic(t).seq,
                        protocol.parse_chunk(p).sha256) for t, p in new}, key=str)
        sent += keys
        waiting += keys
        if not waiting:
            break
        # The ingest acks half of what is in flight: the rest stays in flight while the
        # cache is read again, and is acked one tick later.
        half, waiting = waiting[:max(1, len(waiting) // 2)], waiting[max(1, len(waiting) // 2):]
        segs = [k for k in half if k[1] is not None]
        mans = [(c, h) for c, s, h in half if s is None]
        up.inbox.put((f"{up.base}/ack", protocol.ack_payload(segs=segs, mans=mans)))
    assert len(sent) == len(set(sent)) == 12 + 3, "an acked item was sent again"
    S = box.store.m.Segment
    assert S.select().where(S.acked == False).count() == 0  # noqa: E712


def test_split_with_known_sha_matches_hashing():
    blob = bytes(range(256)) * 1200
    sha = hashlib.sha256(blob).hexdigest()
    assert protocol.split(blob, 40000, sha256=sha) == protocol.split(blob, 40000)
    chunks = [protocol.parse_chunk(p) for p in protocol.split(blob, 40000, sha256=sha)]
    assert b"".join(c.data for c in chunks) == blob and chunks[0].sha256 == sha


def _msgs(box, cid, size=40000):
    out = []
    for s in box.store.segments_of(cid):
        t = protocol.seg_topic("linetap", "site1", box.device, cid, s.seq)
        out += [(t, p) for p in protocol.split(box.store.abs(s.path).read_bytes(), size)]
    t = protocol.man_topic("linetap", "site1", box.device, cid)
    out += [(t, p) for p in protocol.split(box.store.abs(box.store.call(cid).manifest)
                                           .read_bytes(), 2000)]
    return out


def test_chunks_whole_in_a_batch_are_joined_in_memory(tmp_path, pki):
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    a, b = write_calls(box, n_calls=2, segs=3, noisy=True)
    ucfg = upstream_cfg(tmp_path / "up", SimpleNamespace(port=1), pki, [box])
    open_db(ucfg.db_url)
    ing = Ingest(ucfg)
    puts = []
    real_put = ing.objects.put

    def put(key, data, **kw):
        puts.append(key)
        return real_put(key, data, **kw)
    ing.objects.put = put
    msgs = _msgs(box, a)
    msgs = msgs + msgs[:3]                    # a duplicated delivery in the same batch
    res = ing.handle_batch(msgs)
    assert not [k for k in puts if k.startswith("partial/")]
    # Every message of a stored file carries the file's ack (none is left unanswered).
    assert all(r is not None and not isinstance(r, Exception) for r in res)
    acked = {tuple(s) for r in res for s in protocol.parse_ack(r[1])["segs"]}
    assert acked == {(a, s.seq, s.sha256) for s in box.store.segments_of(a)}
    assert is_complete(UCall.get(UCall.call == a)) and ing.stored == 3 + 1
    # Split across batches, the same file goes through partial/ and is stored the same.
    msgs = _msgs(box, b)
    first, rest = msgs[:1], msgs[1:]
    assert ing.handle_batch(first) == [None]
    assert [k for k in puts if k.startswith("partial/")]
    ing.handle_batch(rest)
    assert is_complete(UCall.get(UCall.call == b))
    assert not ing.objects.walk("partial")
    assert USegment.select().count() == 6
    # A duplicate batch is acked again and stores nothing new.
    n = ing.stored
    res = ing.handle_batch(_msgs(box, a))
    assert ing.stored == n and all(r is not None for r in res)


def test_box_and_worker_sockets_have_nagle_off(tmp_path, broker, pki):
    """Acks are small packets the window waits for: Nagle's algorithm would hold one
    until the peer's delayed ACK."""
    import socket

    from tests.support.syncbox import InProcWorker, Running, wait_for
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    worker = InProcWorker(upstream_cfg(tmp_path / "up", broker, pki, [box]))
    run = Running(box, broker, pki)
    try:
        wait_for(lambda: run.up.connected.is_set() and worker.w.connected.is_set(),
                 what="both connected")
        for client in (run.up.client, worker.w.client):
            assert client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        run.close()
        worker.close()


def test_the_ack_timeout_runs_from_the_brokers_puback(tmp_path):
    """A full window still queued for a slow uplink is not sent again however long the
    queue takes (below the cap); once the broker has PUBACKed it, the ack timeout runs.
    Clocks are moved by hand, nothing waits."""
    from sync.uploader import Uploader
    _priv, pub, *_ = practice_keys(tmp_path)
    box = make_box(tmp_path / "box", pub)
    write_calls(box, n_calls=1, segs=4)
    cfg = box_cfg(box.data_dir, device=box.device, window=4)
    up = Uploader(box.store, cfg, device=box.device, data_dir=box.data_dir, ack_timeout_s=10.0)
    up.client = _Client(puback=False)
    up.connected.set()
    up._next_health = float("inf")
    up.tick()
    first = len(up.client.sent)
    assert len(up.inflight) == 4 and first >= 4
    for k in up.inflight:                 # 20 s in the uplink's queue: 2 ack timeouts
        up.inflight[k] -= 20.0
    up.tick()
    assert up.resent == 0 and len(up.client.sent) == first
    for info in up.client.infos:          # the broker PUBACKs them now
        info.published = True
    up.tick()
    assert up.resent == 0 and len(up._delivered) == 4
    for k in up._delivered:               # 11 s after the PUBACK, no ack from upstream
        up._delivered[k] -= 11.0
    up.tick()
    assert up.resent == 4
    assert len(up.client.sent) == 2 * first     # the same four items went out again
    assert len(up.inflight) == 4
