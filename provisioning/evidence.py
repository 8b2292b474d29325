"""What a factory reset would destroy: calls on the box not yet uploaded.

Read straight from the store's SQLite file, read-only, so the agent never opens the
store for writing (or runs its migrations) behind the recorder's back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from recorder.storage.store import DB_FILE

# A call is safe upstream only when its manifest and every one of its segments were
# acked; a call still recording (state 'active') is never safe.
_UNSYNCED = """
SELECT COUNT(*) FROM call AS c
WHERE c.state != 'deleted'
  AND (c.state = 'active' OR c.manifest_acked = 0
       OR EXISTS (SELECT 1 FROM segment AS s WHERE s.call_id = c.id AND s.acked = 0))
"""


def unsynced_calls(data_dir) -> int:
    """How many calls in ``data_dir`` would be lost for good by erasing it (0 if there
    is no store). Raises ``sqlite3.Error`` for a store that cannot be read, so a broken
    database is never taken for an empty one."""
    path = Path(data_dir) / DB_FILE
    if not path.exists():
        return 0
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(con.execute(_UNSYNCED).fetchone()[0])
    finally:
        con.close()
