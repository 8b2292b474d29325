"""Linetap hw package."""
