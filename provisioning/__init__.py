"""Linetap provisioning package."""
