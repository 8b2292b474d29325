"""The box's side of signed A/B updates with RAUC (docs/updates.md).

Answers: *how does a new version reach this box, and when may it reboot into it?*
:mod:`.stages` is the contract with the upstream (stage reports, the persisted state and
what a boot means for it); :mod:`.policy` decides when the box may reboot (every line
idle, inside the maintenance window, a countdown a call cancels); :mod:`.download`
fetches a bundle over HTTPS with the device certificate, resumably; :mod:`.rauc` runs
the ``rauc`` client; :mod:`.service` is the updater thread that ties them together.

May import: ``recorder``'s shared basics and ``sync``'s own modules. The health gate
that marks a new slot good reads the recorder and lives in
:mod:`recorder.runtime.healthgate`.
"""
