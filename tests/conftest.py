"""Shared fixtures: a practice key pair, the simulation runner, and the sync rigs (a TLS
PKI, a real mosquitto, a PostgreSQL server).

``tests/`` is a package tree (``__init__.py`` in every folder), so pytest imports each
test module under its full dotted name (``tests.sync.upstream.test_audit``): file names
need not be unique, and the shared rigs are ordinary imports from :mod:`tests.support`
for tests and for ``bench/`` alike (run from the repository root).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from recorder.evidence import keys
from tests.support.broker import DEVICES, MOSQUITTO, PG_BIN, PKI, Broker, Postgres
from tests.support.sim import Sim

pytest_plugins = ["pytester", "tests.support.skipguard"]


@pytest.fixture(scope="session")
def practice_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keys.practice_keygen(d / "practice.key")
    return priv, pub


@pytest.fixture
def sim(tmp_path, practice_keys):
    return Sim(tmp_path, practice_keys)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    p = PKI(tmp_path_factory.mktemp("pki"))
    p.devices = {cn: p.client(cn) for cn in DEVICES}
    p.ingest = p.client("ingest")
    return p


@pytest.fixture
def broker(tmp_path, pki):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    d = tmp_path / "broker"
    d.mkdir()
    b = Broker(d, pki)
    b.start()
    yield b
    b.stop()


@pytest.fixture(scope="session")
def s3server(tmp_path_factory):
    """moto's S3 server on a free loopback port (tests/support/s3.py)."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    from tests.support.s3 import MotoServer
    srv = MotoServer(tmp_path_factory.mktemp("s3"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def postgres():
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN}")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 is not installed")
    pg = Postgres()
    try:
        pg.start()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"PostgreSQL did not start: {exc}")
    yield pg
    pg.stop()
