"""The command line: ``linetap`` and its verbs.

Answers: *what can a person type, and what does each verb do?* :mod:`.main` parses the
arguments and maps :class:`~recorder.errors.LinetapError` to a clear message and exit
status 2; :mod:`.verbs` holds one handler per verb of the box; :mod:`.doctor` checks a
box end to end; :mod:`.demo` is ``make demo``.

May import: every room. Nothing imports the command line (the console script enters
at :func:`main`).
"""

from recorder.cli.main import main

__all__ = ["main"]
