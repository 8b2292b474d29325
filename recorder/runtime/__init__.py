"""Runtime: the daemon, assembled from parts, and the threads that keep it alive.

Answers: *how do the rooms run together on a box?* :mod:`.daemon` starts capture,
calls, storage and house-keeping threads in dependency order and stops them in reverse;
:mod:`.assembly` builds the services a run needs (retention, the uploader) and passes
them in (the daemon sees them through :mod:`.service_api`); :mod:`.hardware` is what it
records from; :mod:`.alarms`,
:mod:`.control_socket` and :mod:`.sdnotify` are how the box tells people and systemd
what is wrong; :mod:`.simulate` runs the same daemon on the simulated line.

May import: every ``recorder`` room and ``hw``. Only :mod:`.assembly` imports ``sync``
(the box's uploader); the daemon itself never does.
"""
