"""doctor on a fresh set-up: the data folder is made at the recorder's first start, so
its absence is not a disk failure."""

from __future__ import annotations

from recorder import config as rconfig
from recorder.cli import doctor


def test_disk_of_a_data_dir_not_made_yet(tmp_path):
    r = doctor.check_disk(rconfig.Config().replace(retention__min_free_mb=0.0),
                          tmp_path / "var" / "lib" / "linetap")
    assert r.status == doctor.OK, r
    assert "not created yet" in r.detail and str(tmp_path) in r.detail
