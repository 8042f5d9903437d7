"""Evaluate: the test split scored, predictions, metrics and the HTML report."""
