"""The base of Linetap's exception hierarchy, and the errors the hardware room raises.

:class:`LinetapError` lives here, at the bottom of the house, so that ``hw`` can raise
project errors without importing ``recorder``; ``recorder.errors`` re-exports it with
the rest of the hierarchy, and that is where other code imports it from. Leaves also
subclass the closest builtin (the gpiozero ``exc.py`` pattern).
"""


class LinetapError(Exception):
    """Base class for all Linetap errors."""


class ScenarioError(LinetapError, ValueError):
    """A scenario file is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems, source="scenario"):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n{lines}")


class HardwareError(LinetapError, OSError):
    """A GPIO or audio device could not be opened or failed while running."""


class SimulationError(LinetapError, ValueError):
    """The simulated line was asked for something it cannot do (e.g. free running with
    no speed to run at)."""


class DspInputError(LinetapError, ValueError):
    """Audio handed to a DSP or synthesis function is unusable (empty, NaN, dtype, rate)."""
