"""Subject access upstream: ``linetap upstream calls --number`` and ``export --number``.

The upstream holds no number in clear, so the search opens the sealed manifests with
the practice key. End to end: two boxes -> mosquitto -> ingest (PostgreSQL) -> search
finds exactly the right calls, and the export is byte-identical to the box's own
``linetap export --number``.
"""

from __future__ import annotations

import json

import pytest

from recorder import cli
from recorder.evidence.keys import practice_keygen
from sync.upstream import config as upstream_config
from sync.upstream.cli import cli_main
from sync.upstream.objectstore import open_objects
from sync.upstream.store import UAudit, UCall
from tests.support.syncbox import (
    InProcWorker,
    Running,
    make_box,
    practice_keys,
    to_toml,
    unacked,
    upstream_raw,
    wait_for,
    write_calls,
)

N1, N2, N3 = "01632960111", "01632960222", "01632960333"


@pytest.mark.usefixtures("objects_backend")
def test_search_and_export_by_number(tmp_path, broker, pki, postgres, capsys):
    _priv, pub, _pubpath, privpath = practice_keys(tmp_path)
    a = make_box(tmp_path / "a", pub, device="dev-a")
    b = make_box(tmp_path / "b", pub, device="dev-b")
    ids_a = write_calls(a, n_calls=4, segs=2, parties=[
        ("inbound", N1, ""), ("outbound", None, N1), ("inbound", N2, ""),
        ("outbound", None, N3)])
    ids_b = write_calls(b, n_calls=2, segs=1, seed=2, parties=[
        ("inbound", N2, ""), ("inbound", N1, "")])
    raw = upstream_raw(tmp_path / "up", broker, pki, [a, b],
                       db_url=postgres.new_db("numbers"))
    conf = tmp_path / "upstream.toml"
    conf.write_text(to_toml(raw))
    worker = InProcWorker(upstream_config.from_dict(raw))
    runs = [Running(x, broker, pki) for x in (a, b)]
    try:
        wait_for(lambda: all(unacked(x.store) == 0 for x in (a, b)), what="both boxes synced")
    finally:
        for r in runs:
            r.close()
        worker.close()
    assert UCall.select().count() == 6
    # Nothing upstream holds the number in clear: not the database, not the objects.
    for r in UCall.select():
        assert N1 not in json.dumps(r.__data__, default=str)
    objects = open_objects(upstream_config.from_dict(raw))
    keys = [k for top in ("seg", "man", "partial") for k, _m in objects.walk(top)]
    assert len(keys) == 10 + 6           # segments and manifests, nothing else
    for k in keys:
        assert N1.encode() not in objects.get(k)

    def search(number, *extra):
        capsys.readouterr()
        assert cli_main(["--config", str(conf), "calls", "--number", number, "--key",
                         str(privpath), "--json", *extra]) == 0
        return {r["call_id"] for r in json.loads(capsys.readouterr().out)}

    # Caller number or dialled digits, on either box; nothing else.
    assert search(N1) == {ids_a[0], ids_a[1], ids_b[1]}
    assert search(N2) == {ids_a[2], ids_b[0]}
    assert search(N3) == {ids_a[3]}
    assert search("01632960999") == set()
    # The same number forms as the box's search (recorder.privacy.number_key).
    assert search("+44 1632 960111") == search("0044 1632 960 111") == search(N1)
    # --number without the key is refused with a reason.
    assert cli_main(["--config", str(conf), "calls", "--number", N1]) == 2
    assert "sealed" in capsys.readouterr().err
    # Another practice's key opens nothing: an error, never "no matches".
    other, _ = practice_keygen(tmp_path / "other.key")
    assert search(N1) and cli_main(["--config", str(conf), "calls", "--number", N1,
                                    "--key", str(other)]) == 1
    out = capsys.readouterr()
    assert out.out.strip() == "" and "INCOMPLETE SEARCH: 6 manifest(s) did not open" in out.err
    assert cli_main(["--config", str(conf), "export", "--key", str(other), "--out",
                     str(tmp_path / "wrong_ex"), "--number", N1]) == 1
    assert "nothing exported" in capsys.readouterr().err
    assert not (tmp_path / "wrong_ex").exists()
    # The box's own export with the wrong key: an error, and no WAV of silence.
    assert cli.main(["export", "--data-dir", str(a.data_dir), "--key", str(other),
                     "--out", str(tmp_path / "wrong_box")]) == 2
    assert "opens none of the 4 call(s)" in capsys.readouterr().err
    assert not list((tmp_path / "wrong_box").glob("*.wav"))
    # The search is audited, with the number masked.
    det = [u.detail for u in UAudit.select() if u.action == "search_number"]
    assert det and all(N1 not in json.dumps(d) for d in det)
    assert det[0]["number"] == "0163*****11"

    # Subject-access export: identical to the box's own ``linetap export --number``.
    assert cli_main(["--config", str(conf), "export", "--key", str(privpath), "--out",
                     str(tmp_path / "up_ex"), "--number", N1]) == 0
    for box, name in ((a, "a_ex"), (b, "b_ex")):
        assert cli.main(["export", "--data-dir", str(box.data_dir), "--key", str(privpath),
                         "--out", str(tmp_path / name), "--number", N1]) == 0
    up = sorted(p.name for p in (tmp_path / "up_ex").iterdir())
    want = sorted(f"{c}.{e}" for c in (ids_a[0], ids_a[1], ids_b[1]) for e in ("wav", "json"))
    assert up == want
    for name in up:
        src = tmp_path / ("b_ex" if name.startswith(ids_b[1]) else "a_ex") / name
        assert (tmp_path / "up_ex" / name).read_bytes() == src.read_bytes(), name
    meta = json.loads((tmp_path / "up_ex" / f"{ids_a[1]}.json").read_text())
    assert meta["dialled_digits"] == N1 and meta["integrity"]["status"] == "verified"
    assert cli_main(["--config", str(conf), "export", "--key", str(privpath), "--out",
                     str(tmp_path / "x"), "--number", N1, "--call", ids_a[0]]) == 2
