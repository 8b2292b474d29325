"""Provisioning: an engineer sets up a box over the USB serial cable.

Answers: *who may change this box, and how does a change land whole?* :mod:`.protocol`
is the framing on the wire, :mod:`.agent` and :mod:`.dispatcher` are the box's side,
:mod:`.client` the engineer's ``linetap-provision``, :mod:`.presence` the button window,
:mod:`.sitefile` and :mod:`.tlscert` the files an engineer brings.

May import: ``recorder`` (config, keys, audit, the control socket client) and ``hw``.
"""
