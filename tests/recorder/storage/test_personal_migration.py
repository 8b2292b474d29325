"""Store migration 2: numbers and names out of the clear columns of a schema 1 store, with
no trace left in any page of the database, its WAL or a backup, and crash-safe."""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from recorder.errors import StoreError
from recorder.evidence import keys, personal
from recorder.privacy import mask_number
from recorder.storage.store import DB_FILE, Store
from tests.support.personal_scan import personal_traces

REPO = Path(__file__).resolve().parents[3]

# The schema 1 tables exactly as recorder/storage/store.py made them before migration 2.
SCHEMA_1 = """
CREATE TABLE "call" ("id" VARCHAR(255) NOT NULL PRIMARY KEY, "device" VARCHAR(255) NOT NULL,
 "line" INTEGER NOT NULL, "direction" VARCHAR(255) NOT NULL, "state" VARCHAR(255) NOT NULL,
 "rate" INTEGER NOT NULL, "codec" VARCHAR(255) NOT NULL, "first_sample" INTEGER,
 "offhook_sample" INTEGER, "end_sample" INTEGER, "start_time" REAL, "offhook_time" REAL,
 "end_time" REAL, "ring_time" REAL, "caller_number" VARCHAR(255), "caller_name" VARCHAR(255),
 "dialled_digits" VARCHAR(255), "meta" TEXT NOT NULL, "segments" INTEGER NOT NULL,
 "samples" INTEGER NOT NULL, "chain_head" VARCHAR(255), "manifest" VARCHAR(255),
 "manifest_sha256" VARCHAR(255), "manifest_acked" INTEGER NOT NULL,
 "legal_hold" INTEGER NOT NULL, "deadline" REAL, "deleted_time" REAL,
 "delete_reason" VARCHAR(255), "created" REAL NOT NULL);
CREATE INDEX "call_state" ON "call" ("state");
CREATE INDEX "call_caller_number" ON "call" ("caller_number");
CREATE INDEX "call_dialled_digits" ON "call" ("dialled_digits");
CREATE INDEX "call_manifest_acked" ON "call" ("manifest_acked");
CREATE INDEX "call_deadline" ON "call" ("deadline");
CREATE TABLE "meta" ("key" VARCHAR(255) NOT NULL PRIMARY KEY, "value" TEXT NOT NULL);
CREATE TABLE "nonce" ("nonce" VARCHAR(255) NOT NULL PRIMARY KEY, "expires" REAL NOT NULL);
CREATE INDEX "nonce_expires" ON "nonce" ("expires");
CREATE TABLE "segment" ("id" INTEGER NOT NULL PRIMARY KEY, "call_id" VARCHAR(255) NOT NULL,
 "seq" INTEGER NOT NULL, "path" VARCHAR(255) NOT NULL, "first_sample" INTEGER NOT NULL,
 "samples" INTEGER NOT NULL, "size" INTEGER NOT NULL, "sha256" VARCHAR(255) NOT NULL,
 "chain" VARCHAR(255) NOT NULL, "created" REAL NOT NULL, "acked" INTEGER NOT NULL,
 "acked_time" REAL, FOREIGN KEY ("call_id") REFERENCES "call" ("id") ON DELETE CASCADE);
CREATE INDEX "segment_call_id" ON "segment" ("call_id");
CREATE INDEX "segment_acked" ON "segment" ("acked");
CREATE UNIQUE INDEX "segment_call_id_seq" ON "segment" ("call_id", "seq");
INSERT INTO meta VALUES ('schema_version', '1');
"""

N_CALLS = 60


def _party(i: int) -> dict:
    """Call ``i``'s personal fields: inbound with a caller id (every third with a name),
    outbound with dialled digits, or a missed call."""
    if i % 4 == 3:
        return {"caller_number": None, "caller_name": None,
                "dialled_digits": f"0163296{1000 + i:04d}"}
    return {"caller_number": f"0163296{5000 + i:04d}",
            "caller_name": f"PATIENT NUMBER{i:03d}" if i % 3 == 0 else None,
            "dialled_digits": None}


def _make_v1(data: Path) -> tuple[list[str], set[str], set[str]]:
    """A schema 1 store written the way the old writer wrote it (row at open with the
    caller, update at close with the dialled digits; a deleted call and retention's
    blanked one). Returns (call ids in order, every number written, every name written).
    Leaves its connection open: :func:`_make_v1_cut` loses power with the WAL full."""
    data.mkdir(parents=True)
    (data / "segments").mkdir()
    db = sqlite3.connect(data / DB_FILE)
    db.execute("PRAGMA journal_mode=wal")
    db.execute("PRAGMA wal_autocheckpoint=0")      # keep the old row images in the WAL
    # Debian builds SQLite with secure_delete on by default, other builds do not: the
    # old store is written without it, so deleted rows leave their bytes behind.
    db.execute("PRAGMA secure_delete=OFF")
    db.executescript(SCHEMA_1)
    ids, numbers, names = [], set(), set()
    for i in range(N_CALLS):
        p = _party(i)
        cid = f"20261125T09{i:04d}Z-L{i % 2}-{i:06x}"
        state = "missed" if i % 10 == 5 and not p["dialled_digits"] else "active"
        db.execute("INSERT INTO call (id, device, line, direction, state, rate, codec, "
                   "start_time, caller_number, caller_name, meta, segments, samples, "
                   "manifest_acked, legal_hold, created) VALUES "
                   "(?, 'lt-test', ?, ?, ?, 8000, 'flac', ?, ?, ?, '{}', 0, 0, 0, 0, ?)",
                   (cid, i % 2, "outbound" if p["dialled_digits"] else "inbound", state,
                    1.8e9 + i, p["caller_number"], p["caller_name"], 1.8e9 + i))
        for s in range(2):
            db.execute("INSERT INTO segment (call_id, seq, path, first_sample, samples, "
                       "size, sha256, chain, created, acked) VALUES "
                       "(?, ?, ?, ?, 80000, 1000, ?, ?, ?, 0)",
                       (cid, s, f"segments/x/{cid}/{s:05d}.seg", s * 80000, "ab" * 32,
                        "cd" * 32, 1.8e9 + i))
        if state == "active":
            db.execute("UPDATE call SET state='closed', dialled_digits=?, "
                       "meta='{\"end_reason\": \"hangup\"}' WHERE id=?",
                       (p["dialled_digits"], cid))
        db.commit()
        ids.append(cid)
        numbers |= {n for n in (p["caller_number"], p["dialled_digits"]) if n}
        names |= {p["caller_name"]} if p["caller_name"] else set()
    # Retention blanked one call (schema 1 set the columns NULL) and a row was deleted
    # outright: their bytes stay in free space.
    db.execute("UPDATE call SET state='deleted', caller_number=NULL, caller_name=NULL, "
               "dialled_digits=NULL WHERE id=?", (ids[0],))
    db.execute("DELETE FROM segment WHERE call_id=?", (ids[1],))
    db.execute("DELETE FROM call WHERE id=?", (ids[1],))
    # Whole pages of rows deleted (without secure_delete, as schema 1 ran): freelist
    # pages that nothing in the migration itself rewrites.
    for i in range(200):
        n = f"0163296{3000 + i:04d}"
        db.execute("INSERT INTO call (id, device, line, direction, state, rate, codec, "
                   "caller_number, caller_name, meta, segments, samples, manifest_acked, "
                   "legal_hold, created) VALUES (?, 'lt-test', 0, 'inbound', 'closed', "
                   "8000, 'flac', ?, ?, '{}', 0, 0, 0, 0, 0)",
                   (f"gone-{i:04d}", n, f"FORMER PATIENT{i:03d}"))
        numbers.add(n)
        names.add(f"FORMER PATIENT{i:03d}")
    db.commit()
    db.execute("DELETE FROM call WHERE id LIKE 'gone-%'")
    db.commit()
    return [i for i in ids if i != ids[1]], numbers, names


def _make_v1_cut(data: Path):
    """:func:`_make_v1` in a process that then dies without closing the database, as at
    a power cut: the old row images stay in the WAL as well as in the file's pages
    (a clean close would checkpoint and delete the WAL)."""
    code = ("import json, os, sys; from pathlib import Path\n"
            "from tests.recorder.storage.test_personal_migration import _make_v1\n"
            "ids, numbers, names = _make_v1(Path(sys.argv[1]))\n"
            "print(json.dumps([ids, sorted(numbers), sorted(names)]), flush=True)\n"
            "os._exit(0)\n")
    r = subprocess.run([sys.executable, "-c", code, str(data)], cwd=REPO,
                       capture_output=True, timeout=120, check=True)
    ids, numbers, names = json.loads(r.stdout)
    return ids, set(numbers), set(names)


@pytest.fixture
def v1(tmp_path):
    data = tmp_path / "data"
    ids, numbers, names = _make_v1_cut(data)
    assert (data / f"{DB_FILE}-wal").stat().st_size > 0
    # The fixture must hold what the migration removes, or the test proves nothing.
    assert personal_traces(data, sorted(numbers)[:3], sorted(names)[:3])
    return data, ids, numbers, names


def _sealer(pub_path):
    return functools.partial(personal.seal, public_key=keys.load_practice_public(pub_path))


def _assert_migrated(data: Path, ids, numbers, names, priv_path) -> None:
    """Schema 2, every call kept in order with its personal data sealed, no trace."""
    store = Store(data)
    try:
        assert store.get_meta("schema_version") == 2
        cols = {r[1] for r in store.db.execute_sql("PRAGMA table_info('call')").fetchall()}
        assert not cols & {"caller_number", "caller_name", "dialled_digits"}
        idx = [r[1] for r in store.db.execute_sql("PRAGMA index_list('call')").fetchall()]
        assert not [i for i in idx if "caller" in i or "dialled" in i]
        rows = store.calls(include_deleted=True)
        assert [r.id for r in rows] == ids                           # none lost, in order
        assert all(len(store.segments_of(r.id)) == 2 for r in rows)
        assert store.integrity_check() == "ok"
        priv = keys.load_practice_private(priv_path)
        for r in rows:
            i = int(r.id.split("T09")[1][:4])
            want = personal.fields() if r.state == "deleted" else _party(i)
            assert personal.open_sealed(r.personal, priv, r.id) == want
            assert r.party_masked == (mask_number(want["caller_number"]
                                                  or want["dialled_digits"]) or None)
        assert store.get_meta("personal_scrub_pending") is None
    finally:
        store.close()
    assert not list(data.glob(f"{DB_FILE}.bak-*"))
    wal = data / f"{DB_FILE}-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    traces = personal_traces(data, sorted(numbers), sorted(names))
    assert traces == [], [(t.path.name, t.what) for t in traces[:5]]


def test_migration_seals_numbers_and_leaves_no_trace(v1, practice_keys):
    data, ids, numbers, names = v1
    priv, pub = practice_keys
    Store(data, sealer=_sealer(pub)).close()
    _assert_migrated(data, ids, numbers, names, priv)


def test_migration_without_the_public_key_is_a_clear_error_and_changes_nothing(v1):
    data, ids, numbers, _names = v1
    with pytest.raises(StoreError, match="must be migrated by the recorder"):
        Store(data)
    assert not list(data.glob(f"{DB_FILE}.bak-*"))     # no second clear copy either
    db = sqlite3.connect(data / DB_FILE)
    try:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            == ("1",)
        kept = {n for (n,) in db.execute("SELECT caller_number FROM call") if n}
        assert kept and kept <= numbers
    finally:
        db.close()


_OPEN = """
import functools, sys
from recorder.evidence import keys, personal
from recorder.storage.store import Store
pub = keys.load_practice_public(sys.argv[2])
Store(sys.argv[1], sealer=functools.partial(personal.seal, public_key=pub)).close()
"""


@pytest.mark.parametrize("point, schema", [
    ("migrate_before_commit", 1), ("scrub_start", 2), ("scrub_vacuumed", 2),
    ("scrub_backup_removed", 2)])
def test_a_power_cut_leaves_the_old_or_the_new_schema_and_every_call(v1, practice_keys,
                                                                      point, schema):
    data, ids, numbers, names = v1
    priv, pub = practice_keys
    env = dict(os.environ, LINETAP_CRASH_AT=point)
    r = subprocess.run([sys.executable, "-c", _OPEN, str(data), str(pub)], cwd=REPO,
                       env=env, capture_output=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr.decode()[-2000:]
    # Read-only look at what the cut left: one schema or the other, whole.
    db = sqlite3.connect(f"file:{data / DB_FILE}?mode=ro", uri=True)
    try:
        version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        cols = {row[1] for row in db.execute("PRAGMA table_info('call')")}
        n = db.execute("SELECT count(*) FROM call").fetchone()[0]
        pending = db.execute("SELECT value FROM meta WHERE key='personal_scrub_pending'") \
            .fetchone()
    finally:
        db.close()
    assert int(version[0]) == schema and n == len(ids)
    assert ("caller_number" in cols) == (schema == 1)
    assert (pending is not None) == (schema == 2)
    # The next start finishes the job.
    Store(data, sealer=_sealer(pub)).close()
    _assert_migrated(data, ids, numbers, names, priv)


def test_a_fresh_store_is_made_at_schema_2_without_a_scrub(tmp_path):
    store = Store(tmp_path / "data")
    try:
        assert store.get_meta("schema_version") == 2
        assert store.get_meta("personal_scrub_pending") is None
        cols = {r[1] for r in store.db.execute_sql("PRAGMA table_info('call')").fetchall()}
        assert {"personal", "party_masked"} <= cols and "caller_number" not in cols
    finally:
        store.close()
