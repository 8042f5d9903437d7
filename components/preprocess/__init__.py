"""Preprocess: seeded stratified split, serving-time decode and resize, sharded TFRecords."""
