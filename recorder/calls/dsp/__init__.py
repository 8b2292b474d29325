"""Signal processing for the line tap: DTMF detection, caller ID decoding, test signals.

Modules: :mod:`.dtmf` (DTMF detector), :mod:`.callerid` (caller ID
decoder), :mod:`hw.linesignals` (signal synthesis for the simulator and tests). numpy only.
"""
