"""Calls: edges and audio in sample order become calls, pauses, masked digits and segments.

Answers: *is there a call on this line, and which samples belong to it?* Decisions are
pure functions on the sample clock (:mod:`.state`); :mod:`.processor` applies them to
the ring buffer and hands finished audio to the storage room's writer as jobs
(:mod:`.jobs`) through a callable; :mod:`.announce` renders what the box plays into the
line; :mod:`.dsp` detects DTMF and decodes caller ID.

May import: ``hw``, ``recorder.capture`` and the shared basics. Never ``storage``,
``evidence`` or ``sync`` (the writer is passed in as a function).
"""
