"""Exception hierarchy (the base class and the hardware errors live in :mod:`hw.errors`).

Every error Linetap raises on purpose derives from :class:`LinetapError`. Leaves also
subclass the closest builtin, so callers that only know ``ValueError`` or ``OSError``
still catch them (the gpiozero ``exc.py`` pattern).
"""


from hw.errors import HardwareError, LinetapError, ScenarioError

__all__ = ["LinetapError", "ScenarioError", "HardwareError", "ConfigError", "KeyFileError",
           "SegmentFormatError", "JournalError", "IntegrityError", "StoreError",
           "ProtocolError", "CommandRejected", "UpdateError"]


class ConfigError(LinetapError, ValueError):
    """The configuration is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems, source="config"):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class KeyFileError(LinetapError, ValueError):
    """A key file is missing, unreadable or not the expected kind of key."""


class SegmentFormatError(LinetapError, ValueError):
    """A segment or manifest file is malformed (bad magic, header, length or version)."""


class JournalError(LinetapError, ValueError):
    """A journal record cannot be made (see :mod:`recorder.storage.journal`)."""


class IntegrityError(LinetapError, ValueError):
    """Stored evidence does not verify: a hash, chain link or signature is wrong."""


class StoreError(LinetapError, RuntimeError):
    """The local store (SQLite plus segment files) cannot do what was asked."""


class ProtocolError(LinetapError, ValueError):
    """A frame or message on a wire (serial, MQTT) is malformed or not allowed."""


class CommandRejected(LinetapError, PermissionError):
    """A signed upstream command was rejected (bad signature, expired, replayed, wrong device)."""


class UpdateError(LinetapError, RuntimeError):
    """An update cannot go on: the bundle's download, size or hash, ``rauc`` or the slots.
    ``retry`` is true when trying again later may succeed (a dropped connection)."""

    def __init__(self, message: str, *, retry: bool = False):
        super().__init__(message)
        self.retry = retry
