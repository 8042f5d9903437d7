"""Ingest: any labelled source in, a checked manifest of usable images (and a quarantine) out."""
