"""`imgclf lr-find`: the learning-rate range test. The steepest-descent pick on generated loss curves,
the refused parameters, and a real range test on real records through the command, with its page."""
from __future__ import annotations

import math
import random

import pytest

from imgclf.components.train import lr_find as lf
from tests.conftest import preprocessed


@pytest.mark.unit
def test_the_steepest_descent_is_found_on_generated_curves():
    rng = random.Random(0)
    for _ in range(200):
        steps, start, end = rng.randint(30, 200), 10 ** rng.uniform(-8, -5), 10 ** rng.uniform(0, 1.5)
        rates = [lf.rate_at(i, steps, start, end) for i in range(steps)]
        centre, width = rng.uniform(math.log10(start) + 2, math.log10(end) - 2), rng.uniform(0.2, 0.8)
        # A drop (logistic in log rate) centred on `centre`, then a rise after the minimum: the descent's
        # steepest point is the centre, whatever the rise does.
        losses = [2.3 - 1.5 / (1 + math.exp(-(math.log10(r) - centre) / width))
                  + max(0.0, math.log10(r) - centre - 3 * width) ** 2 * rng.uniform(1, 5) for r in rates]
        found = math.log10(rates[lf.steepest(rates, losses)])
        assert abs(found - centre) <= 1.5 * (math.log10(end / start) / (steps - 1)) + 0.05, (centre, found)
    assert lf.rate_at(0, 50, 1e-7, 10) == 1e-7 and lf.rate_at(49, 50, 1e-7, 10) == pytest.approx(10)


@pytest.mark.unit
def test_bad_ranges_are_refused_before_any_work(tmp_path):
    for start, end, steps in ((0, 1, 100), (1, 0.5, 100), (1e-7, float("inf"), 100), (1e-7, 1, 5)):
        with pytest.raises(ValueError, match="lr-find"):
            lf.lr_find(str(tmp_path / "none"), start_lr=start, end_lr=end, steps=steps)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return preprocessed(tmp_path_factory.mktemp("lrfind"), 30)


def test_a_range_test_on_real_records_through_the_command(records, tmp_path, capsys):
    from imgclf.pipelines.cli.main import main

    page = tmp_path / "lr.html"
    assert main(["lr-find", "--dataset-dir", str(records), "--batch-size", "16", "--steps", "60",
                 "--output-html", str(page), "--seed", "4"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("lr-find: baseline, batch 16, "))
    import json

    result = json.loads(out.strip().splitlines()[-1])
    rates, losses = result["rates"], result["losses"]
    assert len(rates) == len(losses) == result["steps_run"] <= 60 and rates == sorted(rates)
    assert rates[0] == pytest.approx(1e-7) and all(map(math.isfinite, losses))
    assert rates[0] < result["suggested"] <= result["min_loss_rate"] < rates[-1] or result["suggested"] == rates[0]
    assert losses[rates.index(result["min_loss_rate"])] == min(losses) < losses[0]  # the loss did fall
    assert f"{result['suggested']:.2g}" in line
    html = page.read_text()
    assert "<img" in html and "Learning-rate range test: baseline" in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lr.html"]  # a diagnostic: nothing else written
    with pytest.raises(SystemExit) as done:
        main(["lr-find", "-h"])
    assert done.value.code == 0 and "--start-lr" in capsys.readouterr().out
