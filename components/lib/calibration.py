"""Calibration: temperature scaling, expected calibration error and the abstention threshold.

Conventions are Guo et al. (2017), "On Calibration of Modern Neural Networks":
- one temperature T > 0 for all classes, fitted on the validation split (never test) by minimising the
  negative log-likelihood of softmax(z / T). Our models end in a softmax and save probabilities, not
  logits; log p differs from the logits z by a per-image constant, and softmax ignores a constant, so
  softmax(log p / T) = softmax(z / T) and the trained model need not change.
- the expected calibration error (ECE) of the top-1 answer over 15 equal-width confidence bins
  (lower edge open, upper edge closed: (0, 1/15], ..., (14/15, 1]), weighted by the images in each bin.

The NLL is convex in beta = 1/T (a log-sum-exp of functions linear in beta, minus a linear one), so a
bounded one-dimensional search over beta finds its one minimum; no gradient code is needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 15
TINY = float(np.finfo(np.float32).tiny)
"""Probabilities are clipped here before the log: a float32 softmax can underflow to exactly 0."""
BETA_RANGE = (1e-3, 1e3)
"""1/T searched over: T from 0.001 to 1000, far beyond any temperature a trained model needs."""


def log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, dtype=np.float64), TINY))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T), row by row (what the exported SavedModel computes, in float64 here)."""
    z = log_probs(probs) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(log p / T)."""
    z = log_probs(probs) / temperature
    top = z.max(axis=1, keepdims=True)
    lse = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(z)), np.asarray(labels, dtype=int)]))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the NLL of `labels` (validation) under softmax(log p / T).

    1.0 (the model as trained) without images, and when every validation answer is right: then the NLL
    only falls as T goes to 0 (every answer pushed to certainty), so it has no minimum to fit and the
    split says nothing about how confident the model should be. Small validation splits of easy data
    are like that; a single error gives the NLL its minimum."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0 or (np.asarray(probs).argmax(axis=1) == np.asarray(labels)).all():
        return 1.0
    found = minimize_scalar(lambda beta: nll(probs, labels, 1.0 / beta), bounds=BETA_RANGE, method="bounded",
                            options={"xatol": 1e-7})
    return float(1.0 / found.x)


def bin_index(confidence: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each confidence's bin: k for (edge k, edge k+1] of np.linspace(0, 1, bins + 1), Guo et al.'s edges
    (so a confidence exactly on an edge goes where their code puts it); 0 goes with the first bin."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="left") - 1, 0, bins - 1)


@dataclass
class Reliability:
    """Per bin: images, mean confidence and accuracy (NaN where empty); and the ECE they add up to."""
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> Reliability:
    probs = np.asarray(probs, dtype=np.float64)
    conf, right = probs.max(axis=1), (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    which = bin_index(conf, bins)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, bins) / counts
        acc = np.bincount(which, right, bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] * np.abs(acc[filled] - mean_conf[filled])) / max(1, len(conf)))
    return Reliability(counts, mean_conf, acc, ece)


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top-1 answer (Guo et al.'s 15 equal-width bins)."""
    return reliability(probs, labels, bins).ece


def abstain_threshold(probs: np.ndarray, labels: np.ndarray, target_precision: float) -> float:
    """The lowest top-1 confidence t such that the images answered with confidence >= t are right at
    least `target_precision` of the time (on the split given: validation); the most images answered
    that way. Answers below t are marked uncertain. 1.0 when no t reaches the target (every answer
    below certainty is uncertain); 0.0 (none) when the target is 0."""
    if target_precision <= 0 or len(labels) == 0:
        return 0.0 if target_precision <= 0 else 1.0
    probs = np.asarray(probs, dtype=np.float64)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(-conf, kind="stable")
    conf, right = conf[order], right[order]
    precision = np.cumsum(right) / np.arange(1, len(conf) + 1)
    # A cut is possible only after the last of equal confidences: t keeps all of them or none.
    cuts = np.append(conf[1:] < conf[:-1], True)
    ok = np.flatnonzero(cuts & (precision >= target_precision - 1e-12))
    return float(conf[ok[-1]]) if len(ok) else 1.0


SLACK = 1e-5
"""How far below the threshold a served answer must be to count as uncertain: the SavedModel computes in
float32 what evaluate chose the threshold on in float64 (about 1e-6 apart), and the validation answer
that set the threshold must not turn uncertain when served."""


def is_uncertain(top_probability, threshold: float):
    """Whether an answer abstains (works on arrays too); never when the threshold is 0."""
    return np.asarray(top_probability) < threshold - SLACK if threshold > 0 else np.zeros_like(top_probability, bool)


def precision_coverage(probs: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """(precision of the answers kept, the share of images kept) when answers below `threshold` abstain;
    precision is NaN when nothing is kept."""
    probs = np.asarray(probs, dtype=np.float64)
    keep = ~is_uncertain(probs.max(axis=1), threshold)
    right = probs.argmax(axis=1) == np.asarray(labels)
    n = int(keep.sum())
    return (float(right[keep].mean()) if n else float("nan")), n / max(1, len(labels))
