"""Ingest: from received bytes (C-STORE, STOW-RS, import) to durable, indexed instances."""
