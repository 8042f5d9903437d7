"""Train: Keras 3 models and everything only training needs (devices, checkpoints, throughput)."""
