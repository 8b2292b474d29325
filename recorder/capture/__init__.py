"""Capture: audio in from the sound card, into one ring buffer per line.

Answers: *what did each line carry, sample by sample?* :mod:`.streams` runs the capture
and playback threads against the sound card; the ring buffer (:mod:`.ring`) holds the
last ``audio.ring_s`` seconds of every line, indexed by absolute sample number, so a call
found late (pre-roll, caller ID before the first ring) is still whole.

May import: ``hw`` and the shared basics at the top of ``recorder`` (``errors``,
``config``). Never the store, the evidence code or ``sync``: capture waits on nothing
but the sound card.
"""
