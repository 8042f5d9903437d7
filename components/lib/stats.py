"""Uncertainty for the figures the product reports and the comparisons it makes.

A test accuracy is an estimate from a finite sample of images: reported alone it invites comparing two
numbers whose difference is noise. Every headline metric gets a 95 % interval, and "the challenger is
better" is a paired test on the same images (both models answer each one), which is far more sensitive
than comparing two intervals: the images both get right or both get wrong carry no information about
which model is better, and a paired test leaves them out.

- accuracy: Wilson's score interval (stays inside [0, 1] and is honest for small samples and extreme
  accuracies, unlike the normal approximation).
- macro F1 (no closed form): a percentile bootstrap over the images, seeded so a report is reproducible.
- challenger vs champion on accuracy: McNemar's exact test, one-sided (the discordant images only: under
  "no difference" each one is a fair coin).
- challenger vs champion on macro F1: a paired bootstrap of the difference, one-sided.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 20261207


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def text(self, digits: int = 4) -> str:
        return f"{self.value:.{digits}f} (95 % CI {self.low:.{digits}f}-{self.high:.{digits}f})"

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval:
    """The share successes/n with Wilson's score interval."""
    if n <= 0:
        return Interval(float("nan"), 0.0, 1.0)
    z = _z(level)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at 0 or n successes the bound equals p up to rounding: keep p inside its own interval
    return Interval(p, max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def _z(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def macro_f1(y: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Macro F1 over the `num_classes` classes (a class with no image and no prediction counts 0, as
    sklearn's f1_score(average="macro", labels=range(num_classes), zero_division=0)), for each row of
    index arrays `y`, `pred` (2-D: one bootstrap sample per row; 1-D: one sample). A prediction equal to
    `num_classes` stands for a class outside these (one only the other model of a comparison knows): a
    miss for its image's class, and no class of its own in the average. Counted with one bincount per
    array over row-offset class indices, so a block of samples costs a few passes over its images."""
    y2, p2 = np.atleast_2d(y), np.atleast_2d(pred)
    k, r = num_classes + 1, len(y2)
    offset = (np.arange(r) * k)[:, None]

    def count(idx, weights=None):
        return np.bincount((idx + offset).ravel(), weights=None if weights is None else weights.ravel(),
                           minlength=r * k).reshape(r, k)[:, :num_classes]

    tp = count(y2, (y2 == p2).astype(np.float64))
    denom = count(y2) + count(p2)
    f1 = np.divide(2 * tp, denom, out=np.zeros(tp.shape), where=denom > 0)
    out = f1.mean(axis=1)
    return out if np.ndim(y) == 2 else out[0]


BLOCK_CELLS = 2_000_000
"""Bootstrap indices drawn a block of samples at a time, at most this many (16 MB of int64) per block:
memory stays bounded whatever the number of test images."""


def _samples(n: int, samples: int, seed: int):
    """`samples` bootstrap resamples of range(n), as blocks of rows; the same for a given seed and n."""
    rng = np.random.default_rng(seed)
    rows = max(1, BLOCK_CELLS // max(n, 1))
    for start in range(0, samples, rows):
        yield rng.integers(0, n, size=(min(rows, samples - start), n))


def bootstrap_macro_f1(y, pred, num_classes: int, level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> Interval:
    """Macro F1 with a percentile bootstrap interval over the images."""
    y, pred = np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    value = float(macro_f1(y, pred, num_classes)) if len(y) else float("nan")
    if len(y) == 0:
        return Interval(value, 0.0, 1.0)
    values = np.concatenate([macro_f1(y[idx], pred[idx], num_classes) for idx in _samples(len(y), samples, seed)])
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return Interval(value, float(low), float(high))


@dataclass(frozen=True)
class Comparison:
    """Challenger minus champion on the same images, with a one-sided p-value for 'the challenger is better'."""
    metric: str
    challenger: float
    champion: float
    difference: Interval
    p_value: float
    test: str

    def as_dict(self) -> dict:
        return {"metric": self.metric, "challenger": self.challenger, "champion": self.champion,
                "difference": self.difference.as_dict(), "p_value": self.p_value, "test": self.test}


def mcnemar(y, challenger, champion, level: float = LEVEL) -> Comparison:
    """Accuracy of two models on the same images: McNemar's exact one-sided test (p = P(at least b of the
    b + c discordant images go the challenger's way | a fair coin)) and Newcombe's interval (method 10)
    for the paired difference, both from the discordant counts alone."""
    from scipy.stats import binomtest

    y, a, b_ = (np.asarray(v) for v in (y, challenger, champion))
    right_a, right_b = a == y, b_ == y
    n = len(y)
    b = int((right_a & ~right_b).sum())  # only the challenger right
    c = int((~right_a & right_b).sum())  # only the champion right
    p_value = float(binomtest(b, b + c, 0.5, alternative="greater").pvalue) if b + c else 1.0
    acc_a, acc_b = float(right_a.mean()) if n else float("nan"), float(right_b.mean()) if n else float("nan")
    return Comparison("accuracy", acc_a, acc_b, _newcombe_paired(int((right_a & right_b).sum()), b, c, n, level),
                      p_value, f"McNemar exact, {b} images only the challenger got right, {c} only the champion")


def _newcombe_paired(both: int, b: int, c: int, n: int, level: float) -> Interval:
    """Newcombe's (1998) interval for a difference of paired proportions, from Wilson intervals."""
    if n == 0:
        return Interval(float("nan"), -1.0, 1.0)
    p1, p2 = (both + b) / n, (both + c) / n
    w1, w2 = wilson(both + b, n, level), wilson(both + c, n, level)
    l1, u1, l2, u2 = w1.low, w1.high, w2.low, w2.high
    diff = p1 - p2
    # the correlation term phi between the two paired outcomes (0 when undefined)
    neither = n - both - b - c
    a_, d_ = both, neither
    marg = (a_ + b) * (c + d_) * (a_ + c) * (b + d_)
    phi = (a_ * d_ - b * c) / math.sqrt(marg) if marg > 0 else 0.0
    dl = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    du = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return Interval(diff, max(-1.0, diff - dl), min(1.0, diff + du))


def paired_bootstrap_macro_f1(y, challenger, champion, num_classes: int, level: float = LEVEL,
                              samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> Comparison:
    """Macro F1 of two models on the same images: the difference resampled over images (both models'
    answers on each drawn image together); p = the share of samples where the challenger is not better."""
    y, a, b = (np.asarray(v, dtype=np.int64) for v in (y, challenger, champion))
    fa, fb = float(macro_f1(y, a, num_classes)), float(macro_f1(y, b, num_classes))
    if len(y) == 0:
        return Comparison("macro_f1", fa, fb, Interval(float("nan"), -1.0, 1.0), 1.0, "paired bootstrap")
    diffs = np.concatenate([macro_f1(y[idx], a[idx], num_classes) - macro_f1(y[idx], b[idx], num_classes)
                            for idx in _samples(len(y), samples, seed)])
    low, high = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    p_value = float((np.sum(diffs <= 0) + 1) / (len(diffs) + 1))
    return Comparison("macro_f1", fa, fb, Interval(fa - fb, float(low), float(high)), p_value,
                      f"paired bootstrap, {samples} samples")
