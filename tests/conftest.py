"""Shared fixtures: a practice key pair and the simulation runner."""

from __future__ import annotations

import pytest
from linetap_testlib import Sim

from recorder import keys


@pytest.fixture(scope="session")
def practice_keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    priv, pub = keys.practice_keygen(d / "practice.key")
    return priv, pub


@pytest.fixture
def sim(tmp_path, practice_keys):
    return Sim(tmp_path, practice_keys)
