"""The uncertainty the product reports: intervals and paired tests checked against independent
computations on generated cases, and for coverage by simulation."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom
from sklearn.metrics import f1_score

from imgclf.components.lib import stats


@pytest.mark.parametrize("case", range(40))
@pytest.mark.unit
def test_macro_f1_agrees_with_sklearn(case):
    rng = np.random.default_rng(case)
    k = int(rng.integers(2, 12))
    n = int(rng.integers(1, 400))
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < rng.random(), y, rng.integers(0, k, n))
    expected = f1_score(y, pred, average="macro", labels=range(k), zero_division=0)
    assert stats.macro_f1(y, pred, k) == pytest.approx(expected, abs=1e-12)
    # the 2-D form answers each row as its own sample
    rows = rng.integers(0, n, size=(5, n))
    got = stats.macro_f1(y[rows], pred[rows], k)
    for r, value in zip(rows, got):
        assert value == pytest.approx(f1_score(y[r], pred[r], average="macro", labels=range(k), zero_division=0))


@pytest.mark.parametrize("case", range(10))
@pytest.mark.unit
def test_an_answer_outside_the_classes_is_a_miss_not_a_class_of_its_own(case):
    """In a comparison across a class change, a model may answer a class the other does not know
    (index k): it must score as sklearn does over the k shared classes."""
    rng = np.random.default_rng(500 + case)
    k, n = int(rng.integers(2, 8)), int(rng.integers(5, 300))
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, rng.integers(0, k + 1, n))
    assert (pred == k).any() or n < 10
    expected = f1_score(y, pred, average="macro", labels=range(k), zero_division=0)
    assert stats.macro_f1(y, pred, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.unit
def test_wilson_matches_the_closed_form_and_stays_inside_0_1():
    # Wilson's interval for 90 of 100 at 95 %: 0.8256-0.9448 (published tables)
    ci = stats.wilson(90, 100)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.8256, 0.9448)
    for s, n in ((0, 10), (10, 10), (1, 1), (0, 1)):
        ci = stats.wilson(s, n)
        assert 0.0 <= ci.low <= ci.value <= ci.high <= 1.0


@pytest.mark.unit
def test_wilson_covers_the_true_accuracy_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits, trials = 0, 2000
    for _ in range(trials):
        p, n = rng.uniform(0.5, 0.99), int(rng.integers(50, 500))
        ci = stats.wilson(int(rng.binomial(n, p)), n)
        hits += ci.low <= p <= ci.high
    assert 0.93 <= hits / trials <= 0.97


@pytest.mark.parametrize("case", range(25))
@pytest.mark.unit
def test_mcnemar_is_the_exact_binomial_tail_of_the_discordant_images(case):
    rng = np.random.default_rng(100 + case)
    n = int(rng.integers(20, 600))
    y = rng.integers(0, 4, n)
    a = np.where(rng.random(n) < 0.8, y, (y + 1) % 4)
    b = np.where(rng.random(n) < 0.75, y, (y + 2) % 4)
    c = stats.mcnemar(y, a, b)
    only_a = int(((a == y) & (b != y)).sum())
    only_b = int(((a != y) & (b == y)).sum())
    discordant = only_a + only_b
    expected = sum(math.comb(discordant, j) for j in range(only_a, discordant + 1)) / 2 ** discordant \
        if discordant else 1.0
    assert c.p_value == pytest.approx(expected, rel=1e-9)
    assert c.p_value == pytest.approx(binom.sf(only_a - 1, discordant, 0.5) if discordant else 1.0, rel=1e-9)
    assert c.difference.value == pytest.approx((only_a - only_b) / n)
    assert c.difference.low <= c.difference.value <= c.difference.high
    assert f"{only_a} images only the challenger got right, {only_b} only the champion" in c.test


@pytest.mark.unit
def test_identical_models_are_never_better_and_a_clearly_better_one_is():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 5, 500)
    same = np.where(rng.random(500) < 0.8, y, (y + 1) % 5)
    assert stats.mcnemar(y, same, same).p_value == 1.0
    assert stats.paired_bootstrap_macro_f1(y, same, same, 5).p_value > 0.5
    better = np.where(rng.random(500) < 0.95, y, (y + 1) % 5)
    assert stats.mcnemar(y, better, same).p_value < 1e-6
    comparison = stats.paired_bootstrap_macro_f1(y, better, same, 5)
    assert comparison.p_value < 0.01 and comparison.difference.low > 0


def test_paired_tests_hold_their_level_under_no_difference():
    """Two models of the same skill whose errors fall independently: 'better at 0.05' must come out
    in about 5 % of the datasets, not more (the gate's false-publish rate)."""
    rng = np.random.default_rng(11)
    wins_mcnemar = wins_boot = 0
    trials = 300
    for _ in range(trials):
        y = rng.integers(0, 3, 200)
        a = np.where(rng.random(200) < 0.85, y, (y + 1) % 3)
        b = np.where(rng.random(200) < 0.85, y, (y + 1) % 3)
        wins_mcnemar += stats.mcnemar(y, a, b).p_value < 0.05
        wins_boot += stats.paired_bootstrap_macro_f1(y, a, b, 3, samples=400).p_value < 0.05
    assert wins_mcnemar / trials <= 0.08 and wins_boot / trials <= 0.09


@pytest.mark.unit
def test_bootstrap_is_seeded():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 300)
    p = np.where(rng.random(300) < 0.7, y, rng.integers(0, 4, 300))
    assert stats.bootstrap_macro_f1(y, p, 4) == stats.bootstrap_macro_f1(y, p, 4)
    ci = stats.bootstrap_macro_f1(y, p, 4)
    assert ci.low < ci.value < ci.high


@pytest.mark.unit
def test_the_paired_difference_interval_covers_the_true_difference_about_95_percent_of_the_time():
    """Newcombe's interval, checked by simulation: two correlated models of known accuracy."""
    rng = np.random.default_rng(21)
    hits, trials = 0, 1500
    for _ in range(trials):
        n = int(rng.integers(80, 600))
        p_both, p_a_only, p_b_only = 0.7, rng.uniform(0.02, 0.12), rng.uniform(0.02, 0.12)
        outcome = rng.choice(4, size=n, p=[p_both, p_a_only, p_b_only, 1 - p_both - p_a_only - p_b_only])
        y = np.zeros(n, dtype=int)
        a = np.where((outcome == 0) | (outcome == 1), 0, 1)
        b = np.where((outcome == 0) | (outcome == 2), 0, 1)
        ci = stats.mcnemar(y, a, b).difference
        hits += ci.low <= p_a_only - p_b_only <= ci.high
    assert 0.93 <= hits / trials <= 0.975
