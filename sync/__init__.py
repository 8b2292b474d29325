"""Linetap sync package."""
