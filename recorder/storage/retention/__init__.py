"""Retention on the box: the pure policy, crash-safe deletion, and the service.

Answers: *which recordings must go now, and how do they go without a trace left half
done?* :mod:`.policy` decides (pure, table-tested), :mod:`.deletion` removes
(rename-marker first, so a power cut is finished at the next start), :mod:`.service`
runs both on a tick and applies the upstream's signed commands.

May import: ``recorder.storage.store``, ``recorder.evidence`` and the shared basics.
"""
