"""Bundles for the update tests, made once per session with firmware/rauc/make-bundle.sh
(a development CA of their own)."""

from __future__ import annotations

import pytest

from tests.support.raucrig import boot_image, make_bundle, root_image, why_rauc_cannot_run


@pytest.fixture(scope="session")
def made(tmp_path_factory):
    """``keys`` (the CA folder), ``root1`` (the image in slot A), and bundles of version
    2.0: ``verity``, ``plain`` (the same root, and a boot partition) and ``rogue``
    (signed by another CA)."""
    reason = why_rauc_cannot_run()
    if reason is not None:
        pytest.skip(f"rauc cannot run here: {reason}")
    d = tmp_path_factory.mktemp("bundles")
    keys = d / "keys"
    root2 = root_image(d / "root2.ext4", "linetap 2.0")     # made from slot A's partitions
    boot2 = boot_image(d / "boot2.vfat")
    return {"keys": keys, "d": d,
            "root1": root_image(d / "root1.ext4", "linetap 1.0"),
            "verity": make_bundle(d / "v2.raucb", keys, version="2.0", rootfs=root2),
            "plain": make_bundle(d / "p2.raucb", keys, version="2.0", fmt="plain",
                                 rootfs=root2, boot=boot2),
            "rogue": make_bundle(d / "rogue.raucb", d / "rogue-keys", version="2.0")}
