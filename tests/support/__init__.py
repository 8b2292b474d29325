"""Rigs shared by the tests and by ``bench/`` (imported as ``tests.support.x``).

Everything here is real, never a mock: :mod:`.broker` (a TLS PKI, mosquitto with mutual
TLS and the per-device ACL, a PostgreSQL server), :mod:`.syncbox` (a box store filled
through the real writer, an uploader running against the broker, an in-process ingest
worker), :mod:`.sim` (scenarios through the real daemon), :mod:`.simbox` (``linetap
simulate`` as a subprocess, killed at will), :mod:`.netlink` and :mod:`.netimpair`
(network namespaces, qdiscs, a userspace netem), :mod:`.corpus` (the talk-off speech
corpus), :mod:`.fuzzctx` (what the fuzz campaign feeds its parsers) and
:mod:`.skipguard` (under ``CI=true`` an unlisted skip fails the run).

Import rule: ``tests.support`` imports the product and nothing else of ``tests`` or
``bench``; the benches import it, the tests import it, and no test imports ``bench``.
"""
