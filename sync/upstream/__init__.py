"""The upstream: ingest workers, the call store, the object store, and the practice's tools.

Answers: *what does the operator run, and what does the practice see there?*
:mod:`.ingest` receives segments over MQTT and acks only after a durable write;
:mod:`.store` (peewee; :mod:`.pgschema` migrates PostgreSQL for volume) and
:mod:`.objectstore` (filesystem, or S3 through :mod:`.s3store`) hold rows and blobs;
:mod:`.ops` applies
retention, holds, deletions and exports; :mod:`.cli` is ``linetap upstream``.

May import: ``sync.protocol``, ``sync.signed_commands`` and the shared format and
evidence code (``recorder.evidence``, ``recorder.errors``, ``recorder.fsutil``,
``recorder.timebase``, ``recorder.privacy``). Never the box's daemon, capture, calls or
storage.
"""
