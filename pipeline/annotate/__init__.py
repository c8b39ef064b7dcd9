"""Annotations and measurements with full history (a later issue)."""
