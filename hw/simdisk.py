"""A simulated data disk: free space that follows what the recordings use.

Beside the real probe (``shutil.disk_usage`` of the data partition), as gpiozero keeps
``MockFactory`` beside its real pin factories: a simulated box's retention asks this,
so the host's real free space never decides what it evicts.
"""

from __future__ import annotations

from pathlib import Path

SIM_DISK_BYTES = 32 * 2**30   # simulated data disk: a 32 GB SD card


class SimDisk:
    """Free-space probe for simulation: a virtual disk of ``capacity`` bytes that holds
    only the recordings under ``root``. Free space follows what is written and deleted,
    and the host's real disk never decides what a simulated box evicts."""

    def __init__(self, root, capacity: int = SIM_DISK_BYTES):
        self.root, self.capacity = Path(root), int(capacity)

    def __call__(self) -> int:
        """Free bytes (may be negative when the recordings exceed ``capacity``)."""
        used = 0
        if self.root.is_dir():
            used = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return self.capacity - used
