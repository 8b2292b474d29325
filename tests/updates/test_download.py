"""Downloading a bundle: HTTPS with the device certificate against a real server on
loopback, interrupted part-way and resumed with a Range request, with size and SHA-256
checked before the bundle is renamed into place."""

from __future__ import annotations

import hashlib
import os
import ssl

import pytest

from recorder.errors import UpdateError
from sync.update import download
from tests.support.broker import PKI
from tests.support.bundleserver import BundleServer

SIZE = 3 * 2**20 + 12345      # more than a few read chunks


@pytest.fixture
def setup(tmp_path):
    pki = PKI(tmp_path)
    blob = tmp_path / "bundle.raucb"
    blob.write_bytes(os.urandom(SIZE))
    dev = pki.client("dev-a")
    ctx = download.tls_context(str(pki.ca), dev.cert, dev.key)
    with BundleServer(pki, {"/b/x.raucb": blob}) as srv:
        want = download.Wanted(srv.url("/b/x.raucb"), SIZE,
                               hashlib.sha256(blob.read_bytes()).hexdigest())
        yield pki, srv, want, ctx, tmp_path / "data" / "update", blob


def test_interrupted_download_resumes_with_a_range_request(setup):
    _pki, srv, want, ctx, folder, blob = setup
    srv.cut_after = 1_000_000
    seen = []
    with pytest.raises(UpdateError, match="interrupted") as err:
        download.fetch(want, folder, ctx, progress=seen.append)
    assert err.value.retry
    part, done = download.paths(folder, want.sha256)
    kept = part.stat().st_size
    assert 0 < kept <= 1_000_000 and not done.exists()
    path = download.fetch(want, folder, ctx, progress=seen.append)
    assert path == done and path.read_bytes() == blob.read_bytes()
    assert not part.exists()
    assert [r[1] for r in srv.requests] == [None, f"bytes={kept}-"]
    assert {r[2] for r in srv.requests} == {"dev-a"}     # the device certificate was shown
    assert seen[-1] == SIZE
    # A finished bundle is not fetched again.
    assert download.fetch(want, folder, ctx) == done and len(srv.requests) == 2


def test_a_server_that_ignores_the_range_restarts_from_zero(setup):
    _pki, srv, want, ctx, folder, blob = setup
    srv.cut_after = 500_000
    with pytest.raises(UpdateError, match="interrupted"):
        download.fetch(want, folder, ctx)
    srv.honour_range = False
    assert download.fetch(want, folder, ctx).read_bytes() == blob.read_bytes()


def test_a_wrong_hash_is_refused_and_the_part_removed(setup):
    _pki, _srv, want, ctx, folder, _blob = setup
    bad = download.Wanted(want.url, want.size, "0" * 64)
    with pytest.raises(UpdateError, match="SHA-256 does not match") as err:
        download.fetch(bad, folder, ctx)
    assert not err.value.retry
    part, done = download.paths(folder, bad.sha256)
    assert not part.exists() and not done.exists()


def test_a_wrong_size_is_refused_before_the_body(setup):
    _pki, _srv, want, ctx, folder, _blob = setup
    with pytest.raises(UpdateError, match="server says the bundle is"):
        download.fetch(download.Wanted(want.url, want.size - 1, want.sha256), folder, ctx)


def test_no_device_certificate_no_bundle(setup):
    pki, _srv, want, _ctx, folder, _blob = setup
    bare = ssl.create_default_context(cafile=str(pki.ca))
    with pytest.raises(UpdateError, match="interrupted|cannot reach") as err:
        download.fetch(want, folder, bare)
    assert err.value.retry


def test_a_missing_bundle_is_not_retried(setup):
    _pki, srv, want, ctx, folder, _blob = setup
    with pytest.raises(UpdateError, match="404") as err:
        download.fetch(download.Wanted(srv.url("/nope"), want.size, want.sha256), folder,
                       ctx)
    assert not err.value.retry
