"""Sync: the box's side of the wire and the upstream behind it.

Answers: *how does a recording leave the box, and how do orders come back?*
:mod:`.protocol` is the wire format (MQTT v5 topics and payloads); :mod:`.signed_commands`
are the upstream's signed orders to one box (delete, hold, retention); :mod:`.uploader`
is the box's outbox thread. The cloud side lives in :mod:`sync.upstream`.

May import: ``recorder`` (the box's uploader reads the store and feeds retention). The
upstream package never imports the box's write path; see ``docs/architecture.md``.
"""
