"""`time_budget`: durations parsed or refused, epochs planned to fit, and a real training that ends within
its budget with its cosine schedule completed, an ETA on every epoch line, EarlyStopping not cutting the
plan short, and the summary saying the budget held."""
from __future__ import annotations

import random
import re

import pytest

from imgclf.components.train import budget
from imgclf.components.train.options import TrainOptions
from tests.conftest import preprocessed


@pytest.mark.unit
def test_durations_are_parsed_from_generated_spellings_and_nonsense_is_refused():
    rng = random.Random(0)
    for _ in range(300):
        h, m, s = rng.choice([0, 0, 1, 2]), rng.randint(0, 59), rng.randint(0, 59)
        if not (h or m or s):
            continue
        text = "".join(f"{v}{u}" + rng.choice(["", " "]) for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)
        assert budget.parse_duration(text.upper() if rng.random() < 0.2 else text) == h * 3600 + m * 60 + s, text
    assert budget.parse_duration("90") == 90 and budget.parse_duration("2.5m") == 150 and budget.parse_duration("") == 0
    for bad in ["x", "5q", "m", "-5m", "0", "0s", "1h30", "5m5", "5 m x", "1e3s", "inf", "nan", "5mm"]:
        with pytest.raises(ValueError, match="is not a duration"):
            budget.parse_duration(bad)
        with pytest.raises(ValueError, match="time_budget"):
            TrainOptions(time_budget=bad)
    assert TrainOptions(time_budget="5m").time_budget == "5m"


@pytest.mark.unit
def test_planned_epochs_fit_the_deadline_on_generated_cases():
    rng = random.Random(1)
    for _ in range(2000):
        deadline, elapsed = rng.uniform(1, 600), rng.uniform(0, 700)
        epoch_s, done = rng.uniform(0.01, 60), rng.randint(1, 30)
        most = rng.randint(done, done + 200)
        n = budget.plan_epochs(deadline, elapsed, epoch_s, done, most)
        assert done <= n <= most
        assert n == done or elapsed + (n - done) * epoch_s <= deadline + 1e-9
        assert n == most or elapsed + (n - done + 1) * epoch_s > deadline  # no whole epoch left unused


@pytest.mark.unit
def test_phases_share_the_budget_by_their_epochs_and_keep_a_reserve(monkeypatch):
    p = budget.Planner(300, [20, 10], started=0.0)
    assert p.deadlines == pytest.approx([200 * (1 - budget.RESERVE_SHARE), 300 * (1 - budget.RESERVE_SHARE)])
    monkeypatch.setattr(budget, "_now", lambda: 300.0)
    assert p.held()
    monkeypatch.setattr(budget, "_now", lambda: 300.5)
    assert not p.held()
    assert [budget.words(s) for s in (0, 45, 125, 3720)] == ["0s", "45s", "2m05s", "1h02m"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return preprocessed(tmp_path_factory.mktemp("budget"), 30)


class Clock:
    """The budget's clock, one simulated second per reading: the planner reads it as it is made, as
    training starts and at each epoch's end, so every epoch "takes" one second and the plan is known
    exactly. Timing a real training would make the test as flaky as the machine's load."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.mark.parametrize("seconds, epochs", [(30, 500), (30, 12)])
def test_a_budgeted_training_plans_its_epochs_and_ends_with_its_schedule_completed(records, tmp_path, capsys,
                                                                                     monkeypatch, seconds, epochs):
    import json

    from imgclf.components.train.step import train

    monkeypatch.setattr(budget, "_now", Clock())
    result = train(str(records), str(tmp_path / "m"), epochs=epochs, batch_size=16, time_budget=f"{seconds}s",
                   patience=1, learning_rate=0.002, seed=3)
    out = capsys.readouterr().out
    lines = re.findall(rf"train: epoch (\d+)/(\d+) of the {seconds}s budget: \S+ s/epoch, \S+ used, ETA (\S+)", out)
    assert len(lines) == result.epochs_run  # an ETA on every epoch line
    # Each plan: the epochs done plus the whole seconds left before the deadline (budget less its reserve),
    # capped by `epochs`; patience=1 did not stop the plan (EarlyStopping does not cut it short).
    # Readings: the planner's start, training's start, the first batch's end, each epoch's end: every epoch
    # "takes" 1 s, the first batch 1 s (tracing: what a new plan costs, kept free). The first plan (after
    # epoch 1, from its other batches) errs short, the second (after epoch 3) uses the rest of the budget.
    deadline = seconds * (1 - budget.RESERVE_SHARE)
    expected = epochs if epochs < deadline - 6 else None
    assert result.epochs_run == int(lines[-1][0]) == int(lines[-1][1]) and lines[-1][2] == "0s"
    if expected is not None:
        assert result.epochs_run == expected  # `epochs` caps the plan
    else:  # the most whole epochs before the deadline, less the reserve and one retrace
        assert deadline - 6 <= result.epochs_run <= deadline - 3
    first, second, third = (int(p) for _, p, _ in lines[:3])
    assert first == second <= third  # planned after epoch 1 (erring short), again after epoch 3
    assert result.budget_held and result.time_budget_seconds == seconds
    history = json.loads((tmp_path / "m" / "history.json").read_text())
    assert history["learning_rate"][-1] == pytest.approx(0.002 * 0.01, rel=1e-3)  # the cosine's floor
    assert f"time budget {seconds}s held" in out
