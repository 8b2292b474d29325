"""Hardware: GPIO pins, the sound card, the sample clock, and the simulated line.

Answers: *what is the box wired to?* Each device sits behind a narrow interface with the
simulated implementation beside the real one, as gpiozero keeps ``MockFactory`` beside
its real pin factories: :mod:`.gpio` and :mod:`.pins` (hook, ring, button, LEDs),
:mod:`.audio` (ALSA), :mod:`.clock` (the sample clock), and the simulation:
:mod:`.simline`, :mod:`.scenario`, :mod:`.alsa_sim`, :mod:`.linesignals`,
:mod:`.simdisk`.

May import: nothing from ``recorder``, ``sync`` or ``provisioning``. This is the bottom
of the house, so the base error class lives here too (:mod:`.errors`).
"""
