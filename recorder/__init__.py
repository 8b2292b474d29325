"""Linetap's box: capture, call detection, consent, pause, encrypted segments.

The rooms are sub-packages, each answering one question (see its ``__init__``):
``capture``, ``calls`` (with ``dsp``), ``storage`` (with ``retention``), ``evidence``,
``runtime`` and ``cli``. The modules at this top level are the shared basics every room
may use and that import no room: ``config``, ``configtxn`` (atomic multi-file apply),
``errors``, ``fsutil``, ``logsetup``, ``privacy``, ``runpaths`` (where volatile files
go), ``sqlfields``, ``threads`` (the one shape of a service thread) and ``timebase``.
"""

__version__ = "0.1.0"


def lean_device_imports() -> None:
    """Keep the recording daemon's process lean: call before anything imports peewee.

    The box never talks to PostgreSQL, yet peewee imports psycopg2 whenever it is
    installed (the upstream's optional dependency, present in every dev venv), and with
    it libpq and a second OpenSSL: 14 MB of resident memory on a 60 MB budget. Marking
    the module absent makes peewee skip it. Only device processes call this (``linetap
    run`` and ``simulate``); tests and upstream tools import psycopg2 normally.
    """
    import sys
    if "peewee" not in sys.modules:
        sys.modules.setdefault("psycopg2", None)
