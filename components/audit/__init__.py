"""The label audit: out-of-fold probabilities from K fold models, ranked by confident learning (cleanlab)."""
