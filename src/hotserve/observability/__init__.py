"""Logs, metrics and events."""
