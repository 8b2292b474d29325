"""Shared fixtures: a practice key pair and the simulation runner."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from linetap_testlib import Sim

from recorder.evidence import keys


@pytest.fixture(scope="session")
def practice_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keys.practice_keygen(d / "practice.key")
    return priv, pub


@pytest.fixture
def sim(tmp_path, practice_keys):
    return Sim(tmp_path, practice_keys)


def pytest_sessionstart(session):
    """Test modules share one namespace (rootdir conftest, prepend import mode), so two
    files with the same name in different folders cannot both be collected. Say so
    plainly instead of pytest's 'import file mismatch'."""
    names = Counter(p.name for p in Path(__file__).parent.rglob("test_*.py"))
    clash = sorted(n for n, c in names.items() if c > 1)
    if clash:
        raise pytest.UsageError(f"test file names must be unique across tests/: {clash}")
