"""The selection step of a sweep: the best trial by its validation score."""
