"""Simulated boxes for ``bench/fleet.py``: many lightweight MQTT v5 publishers in one
process, replaying pre-sealed segments and manifests.

Each :class:`Box` is one TLS connection with its own client id and client certificate
(CN = device id, so the broker's per-device ACL applies as to a real box) speaking the
little of MQTT v5 a box's upload needs: CONNECT, SUBSCRIBE to its ``ack`` topic,
PUBLISH at QoS 1 with PUBACKs, and PUBACK for the acks it receives. A box has
``LINES`` busy lines; each line's call sends one segment every ``SEG_S`` seconds and,
after its last segment, the call's manifest.

Nothing is sealed while the bench runs. A segment file is the template's (one real
10 s FLAC segment the box's Writer sealed) with this box's device, call and seq in its
header: the ingest checks the file's structure, header, size and sha256, never the
payload, which only the practice key opens. A manifest is the template manifest's
sealed payload (the call's metadata) under a header listing this call's segments and
chain head, signed with the box's Ed25519 identity (:func:`bench.fleetpki.identity`):
the ingest checks it exactly as a real one (signature, signer pinned for the device,
chain head over the segment list). The first call of each line is cut at a random
length so that manifests flow at their steady rate (1 per ``call_segments``) from the
first second.

:func:`serve` runs in a child process (``multiprocessing``, spawn) and takes commands
over a pipe, so the fleet is spread over several processes with thousands of boxes
multiplexed on one asyncio loop each.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import random
import ssl
import struct
import time

from bench.fleetpki import identity
from recorder.evidence import chain, segfile
from recorder.evidence.keys import raw_public
from sync import protocol

SEG_S = 10.0           # seconds of audio per segment (the box's default segment_s)
LINES = 4              # busy lines per box: a 4-line practice at its busiest
PREFIX = "linetap"
# One box in real time sends LINES / SEG_S segments a second: 0.4.
BOX_SEGMENTS_PER_S = LINES / SEG_S
CONNECT_PARALLEL = 64  # TLS handshakes in flight per process while connecting


# -- the little MQTT v5 a box needs --------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Stats:
    """What one process's boxes saw in one step (times are ``time.monotonic()``, which
    is the same clock in every process)."""

    def __init__(self):
        self.seg_lat: list[float] = []      # s, first chunk published -> ack received
        self.seg_times: list[float] = []    # when each segment ack arrived
        self.man_lat: list[float] = []
        self.offered = self.man_offered = 0
        self.conflicts = self.rejected = 0
        self.first_rejection = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Line:
    """One busy line: its call, the next seq, and the sha256 of each segment sent."""

    def __init__(self, length: int):
        self.length = length
        self.new_call(length)

    def new_call(self, length: int) -> None:
        self.call = f"F{random.getrandbits(40):010x}"
        self.seq, self.shas, self.sizes, self.remaining = 0, [], [], length


class Box:
    """One simulated box on one TLS connection."""

    def __init__(self, device: str, site: str, cert: str, key: str, ca: str, t: dict,
                 call_segments: int):
        self.device, self.site = device, site
        self.cert, self.key, self.ca = cert, key, ca
        self.t = t
        self.identity = identity(device)
        self.signer = raw_public(self.identity.public_key()).hex()
        self.call_segments = call_segments
        self.lines = [Line(random.randint(1, call_segments)) for _ in range(LINES)]
        self.stats = Stats()
        self.pid = 0
        self.pubacks: dict[int, asyncio.Future] = {}
        self.sent: dict[tuple, float] = {}        # (call, seq) -> time of first chunk
        self.man_sent: dict[tuple, float] = {}    # (call, sha256) -> time of first chunk
        self.writer = None
        self.window: asyncio.Semaphore | None = None   # saturation mode
        self.tasks: set[asyncio.Task] = set()     # held, so none is collected mid-send
        self.ack_topic = f"{protocol.base(PREFIX, site, device)}/ack"

    @property
    def outstanding(self) -> int:
        return len(self.sent) + len(self.man_sent)

    async def connect(self, port: int) -> None:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.load_cert_chain(self.cert, self.key)
        ctx.check_hostname = False
        reader, self.writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        # Clean start, keep alive 0 (the bench's connections live only for the run).
        body = _str("MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0) + b"\x00" \
            + _str(self.device)
        self.writer.write(_packet(0x10, body))
        hdr = await reader.readexactly(2)
        rest = await reader.readexactly(hdr[1])
        if hdr[0] != 0x20 or rest[1] != 0:
            raise RuntimeError(f"{self.device}: CONNACK refused ({rest[1]})")
        self.reader = reader
        self.task = asyncio.create_task(self._read())
        pid = self._next()
        fut = self.pubacks[pid] = asyncio.get_running_loop().create_future()
        self.writer.write(_packet(0x82, struct.pack("!H", pid) + b"\x00"
                                  + _str(self.ack_topic) + b"\x01"))
        await fut

    def _next(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid

    async def _read(self) -> None:
        r = self.reader
        while True:
            first = (await r.readexactly(1))[0]
            n, mult = 0, 1
            while True:
                b = (await r.readexactly(1))[0]
                n += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            body = await r.readexactly(n)
            kind = first >> 4
            if kind in (4, 9):                       # PUBACK, SUBACK
                fut = self.pubacks.pop(struct.unpack_from("!H", body)[0], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif kind == 3:                          # PUBLISH (our ack topic)
                tl = struct.unpack_from("!H", body)[0]
                off = 2 + tl
                if (first >> 1) & 3:
                    self.writer.write(b"\x40\x02" + body[off:off + 2])
                    off += 2
                plen, i, mult = 0, 0, 1
                while True:                          # properties length
                    b = body[off + i]
                    plen += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        break
                self._acked(body[off + i + plen:])

    def _acked(self, payload: bytes) -> None:
        now = time.monotonic()
        ack = protocol.parse_ack(payload)
        st = self.stats
        for call, seq, _sha in ack["segs"]:
            t0 = self.sent.pop((call, seq), None)
            if t0 is not None:
                st.seg_times.append(now)
                st.seg_lat.append(now - t0)
                if self.window is not None:
                    self.window.release()
        for call, sha in ack["mans"]:
            t0 = self.man_sent.pop((call, sha), None)
            if t0 is not None:
                st.man_lat.append(now - t0)
        st.conflicts += len(ack["conflicts"])
        for call, detail in ack["rejected"]:
            st.rejected += 1
            st.first_rejection = st.first_rejection or f"{self.device}/{call}: {detail}"
            self.man_sent = {k: v for k, v in self.man_sent.items() if k[0] != call}

    # -- files -------------------------------------------------------------------------------
    def _file(self, kind: int, header: dict, sealed: bytes) -> bytes:
        hdr = segfile.canonical(header)
        return segfile._PRE.pack(segfile.MAGIC, segfile.VERSION, kind, len(hdr)) + hdr + sealed

    def segment(self, line: Line) -> tuple[str, str, bytes, str | None, bytes | None]:
        """The line's next segment (topic, sha256, file) and, if it ends the call, the
        call's manifest (topic, file)."""
        h = dict(self.t["header"], device=self.device, call=line.call, seq=line.seq)
        blob = self._file(segfile.KIND_SEGMENT, h, self.t["sealed"])
        sha = hashlib.sha256(blob)
        topic = protocol.seg_topic(PREFIX, self.site, self.device, line.call, line.seq)
        line.shas.append(sha.digest())
        line.sizes.append(len(blob))
        line.seq += 1
        line.remaining -= 1
        man_topic = man = None
        if line.remaining <= 0:
            man_topic, man = self.manifest(line)
            line.new_call(self.call_segments)
        return topic, sha.hexdigest(), blob, man_topic, man

    def manifest(self, line: Line) -> tuple[str, bytes]:
        """The signed manifest of the line's call, as the box's Writer makes it."""
        segs = [{"seq": i, "sha256": s.hex(), "size": n}
                for i, (s, n) in enumerate(zip(line.shas, line.sizes, strict=True))]
        h = dict(self.t["man_header"], device=self.device, call=line.call,
                 created=_iso(time.time()), segments=segs, signer=self.signer,
                 chain_head=chain.chain_of(self.device, line.call, line.shas).hex())
        body = self._file(segfile.KIND_MANIFEST, h, self.t["man_sealed"])
        return protocol.man_topic(PREFIX, self.site, self.device, line.call), \
            body + self.identity.sign(body)

    async def _publish(self, topic: str, chunks: list[bytes]) -> None:
        futs = []
        loop = asyncio.get_running_loop()
        for chunk in chunks:
            pid = self._next()
            fut = self.pubacks[pid] = loop.create_future()
            self.writer.write(_packet(0x32, _str(topic) + struct.pack("!H", pid) + b"\x00"
                                      + chunk))
            futs.append(fut)
        await self.writer.drain()
        await asyncio.gather(*futs)

    async def send(self, line: Line) -> None:
        topic, sha, blob, man_topic, man = self.segment(line)
        t = protocol.parse_topic(topic)
        self.sent[(t.call, t.seq)] = time.monotonic()
        self.stats.offered += 1
        await self._publish(topic, protocol.split(blob, sha256=sha))
        if man is not None:
            msha = hashlib.sha256(man).hexdigest()
            self.man_sent[(protocol.parse_topic(man_topic).call, msha)] = time.monotonic()
            self.stats.man_offered += 1
            await self._publish(man_topic, protocol.split(man, sha256=msha))

    # -- schedules ---------------------------------------------------------------------------
    async def run_saturated(self, until: float, window: int) -> None:
        """Back to back: up to ``window`` segments awaiting the upstream's ack, the
        lines in turn."""
        self.window = asyncio.Semaphore(window)
        loop = asyncio.get_running_loop()
        i = 0
        while loop.time() < until:
            await self.window.acquire()
            if loop.time() >= until:
                break
            self._spawn(self.send(self.lines[i % LINES]))
            i += 1

    async def run(self, start: float, until: float) -> None:
        """Real time: each line sends a segment every ``SEG_S``, phases at random."""
        loop = asyncio.get_running_loop()
        nxt = [start + random.uniform(0, SEG_S) for _ in range(LINES)]
        while True:
            i = min(range(LINES), key=nxt.__getitem__)
            if nxt[i] >= until:
                return
            await asyncio.sleep(max(0.0, nxt[i] - loop.time()))
            nxt[i] += SEG_S
            self._spawn(self.send(self.lines[i]))

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


# -- a publisher process -----------------------------------------------------------------------
async def _connect_all(boxes: list[Box], port: int) -> None:
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one(b):
        async with gate:
            await b.connect(port)
    await asyncio.gather(*(one(b) for b in boxes))


async def _step(boxes: list[Box], start: float, seconds: float, window: int,
                drain_s: float) -> dict:
    for b in boxes:
        b.stats = Stats()
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - loop.time()))
    until = start + seconds
    if window:
        await asyncio.gather(*(b.run_saturated(until, window) for b in boxes))
    else:
        await asyncio.gather(*(b.run(start, until) for b in boxes))
    # Drain: every segment and manifest of the step acked, or give up after drain_s.
    end = loop.time() + drain_s
    while any(b.outstanding for b in boxes) and loop.time() < end:
        await asyncio.sleep(0.1)
    for b in boxes:
        b.window = None
    out = Stats()
    for b in boxes:
        for k, v in b.stats.as_dict().items():
            if isinstance(v, list):
                getattr(out, k).extend(v)
            elif isinstance(v, int):
                setattr(out, k, getattr(out, k) + v)
            elif v and not out.first_rejection:
                out.first_rejection = v
    d = out.as_dict()
    d["outstanding"] = sum(b.outstanding for b in boxes)
    for b in boxes:            # a straggler of this step must not count in the next
        b.sent.clear()
        b.man_sent.clear()
    return d


def serve(conn, port: int, ca: str, specs: list[tuple], template: dict,
          call_segments: int) -> None:
    """A publisher process: boxes ``specs`` (device, site, cert, key), commands from
    ``conn``: ``("connect", n)``, ``("step", n, start, seconds, window, drain_s)``
    (``start`` on ``time.monotonic()``), ``("quit",)``. Each answers with a tuple."""
    async def main():
        loop = asyncio.get_running_loop()
        boxes = [Box(d, s, c, k, ca, template, call_segments) for d, s, c, k in specs]
        connected = 0
        while True:
            cmd = await loop.run_in_executor(None, conn.recv)
            if cmd[0] == "quit":
                for b in boxes[:connected]:
                    b.writer.close()
                conn.send(("ok",))
                return
            if cmd[0] == "connect":
                n = min(cmd[1], len(boxes))
                t0 = time.monotonic()
                await _connect_all(boxes[connected:n], port)
                connected = max(connected, n)
                conn.send(("ok", connected, time.monotonic() - t0))
            elif cmd[0] == "step":
                _c, n, start, seconds, window, drain_s = cmd
                conn.send(("ok", await _step(boxes[:n], start, seconds, window, drain_s)))

    try:
        asyncio.run(main())
    except Exception as exc:    # noqa: BLE001 - reported to the parent, which stops
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
