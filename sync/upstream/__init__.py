"""The upstream: ingest workers, the call store, the object store, and the practice's tools.

Answers: *what does the operator run, and what does the practice see there?*
:mod:`.ingest` receives segments over MQTT and acks only after a durable write;
:mod:`.store` (peewee; :mod:`.pgschema` migrates PostgreSQL for volume) and
:mod:`.objectstore` (filesystem, or S3 through :mod:`.s3store`) hold rows and blobs;
:mod:`.ops` applies
retention, holds, deletions and exports; :mod:`.cli` is ``linetap upstream``;
:mod:`.setup`, :mod:`.pki` and :mod:`.templates` stand an upstream up (``init``,
``check``, ``serve``) and enrol, pin and revoke boxes; :mod:`.tracking` gives commands a
state and problems a resolution; :mod:`.fleet` watches every box's health and alerts;
:mod:`.portal` is the practice portal.

May import: ``sync.protocol``, ``sync.signed_commands``, ``sync.linkstate`` and the
shared format and evidence code (``recorder.evidence``, ``recorder.errors``,
``recorder.fsutil``, ``recorder.timebase``, ``recorder.privacy``); :mod:`.setup` also
``provisioning.sitefile``, to check the site files it writes with the provisioning
path's own checker. Never the box's daemon, capture, calls or storage.
"""
