"""Predict: classify images through an exported SavedModel's own serving signature."""
