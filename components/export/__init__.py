"""Export: the raw-bytes SavedModel and the serving checks that prove it answers like evaluate."""
