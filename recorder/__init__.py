"""Linetap device daemon: capture, call detection, consent, pause, encrypted segments."""

__version__ = "0.1.0"
