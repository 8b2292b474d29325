"""``objects_backend``: run a test on the filesystem object store and on S3 (moto's server),
the same test body for both. Test modules that touch the object store use it with
``pytestmark = pytest.mark.usefixtures("objects_backend")``."""

from __future__ import annotations

import pytest

from tests.support import syncbox


@pytest.fixture(params=["fs", "s3"])
def objects_backend(request):
    if request.param == "fs":
        syncbox.OBJECTS_SECTION = None
        yield "fs"
        return
    srv = request.getfixturevalue("s3server")
    bucket = srv.new_bucket(object_lock=True)
    syncbox.OBJECTS_SECTION = lambda tmp: srv.objects_section(bucket)
    try:
        yield "s3"
    finally:
        syncbox.OBJECTS_SECTION = None
