"""Storage: the box's durable copy of every call, and its retention.

Answers: *is this recording safely on disk, and when may it go?* The writer encodes,
seals, writes atomically and commits rows (:mod:`.writer`, :mod:`.journal`,
:mod:`.store`); start-up recovery adopts what a power cut left (:mod:`.recovery`);
:mod:`.retention` deletes by policy, crash-safely.

May import: ``recorder.calls`` (the jobs it stores, :mod:`recorder.calls.jobs`),
``recorder.evidence`` (the formats it writes), ``hw`` and the shared basics. Never
``runtime``, ``cli`` or ``sync``.
"""
