"""Release: the champion lookup, the champion/challenger gate and publish into the model registry."""
