"""Signal processing for the line tap: DTMF detection, caller ID decoding, test signals.

Modules: :mod:`recorder.dsp.dtmf` (DTMF detector), :mod:`recorder.dsp.dtmf_mask` (DTMF
masking detector: spans that may be digits, also under speech), :mod:`recorder.dsp.callerid`
(caller ID decoder), :mod:`recorder.dsp.gen` (signal synthesis for the simulator and tests).
numpy only.
"""
