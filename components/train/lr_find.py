"""`imgclf lr-find`: the learning-rate range test (Smith, "Cyclical Learning Rates", 2017; fastai's
`lr_find`). The model the train options describe takes one optimizer step per batch at learning rates
growing exponentially from `start_lr` to `end_lr`, and the smoothed loss is recorded until it explodes.
The rate where the loss falls fastest is the suggestion for `learning_rate`; the page shows the curve,
so a user sees why. Nothing is saved but the page: this is a diagnostic, not a training.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass

from imgclf.components.contracts import RecordsMetadata
from imgclf.components.lib import reports, storage
from imgclf.components.lib.options import takes
from imgclf.components.train.options import TrainOptions

SMOOTHING = 0.98
"""Exponential moving average of the batch losses (bias-corrected), as fastai smooths them."""
EXPLODED = 4.0
"""Stop once the smoothed loss is this many times its minimum: past that the rates only diverge."""


@dataclass
class LrFind:
    suggested: float
    """The rate where the smoothed loss falls fastest (steepest descent against log rate)."""
    min_loss_rate: float
    """The rate at the smoothed loss's minimum; a tenth of it is the other common rule of thumb."""
    steps_run: int
    stopped: str
    rates: list[float]
    losses: list[float]


def rate_at(step: int, steps: int, start_lr: float, end_lr: float) -> float:
    return start_lr * (end_lr / start_lr) ** (step / max(1, steps - 1))


def steepest(rates: list[float], losses: list[float]) -> int:
    """Index of the steepest descent of the loss against log10(rate), by central differences over the
    points before the minimum (the descent, not the explosion after it); the ends are left out."""
    low = min(range(len(losses)), key=losses.__getitem__)
    if low < 2:
        return low
    logs = [math.log10(r) for r in rates]
    slopes = [(losses[i + 1] - losses[i - 1]) / (logs[i + 1] - logs[i - 1]) for i in range(1, low)]
    return 1 + min(range(len(slopes)), key=slopes.__getitem__)


def _check(start_lr: float, end_lr: float, steps: int) -> None:
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise ValueError(f"lr-find: start_lr {start_lr:g} must be positive and below end_lr {end_lr:g}")
    if steps < 10:
        raise ValueError(f"lr-find: steps {steps} is too few for a curve (at least 10)")


@takes(TrainOptions)
def lr_find(dataset_dir: str, opts: TrainOptions, *, output_html: str = "", start_lr: float = 1e-7,
            end_lr: float = 10.0, steps: int = 100) -> LrFind:
    """Run the range test on preprocess's records (`dataset_dir`) with the train options (architecture,
    batch size, augmentation, label smoothing, weights ...), write the page to `output_html` if given,
    and print the suggestion."""
    import keras
    import numpy as np

    from imgclf.components.lib import records
    from imgclf.components.train import models
    from imgclf.components.train.step import _input, resolve_weights

    _check(start_lr, end_lr, steps)
    meta = RecordsMetadata.load(dataset_dir)
    keras.utils.set_random_seed(opts.seed)
    with tempfile.TemporaryDirectory(prefix="imgclf-lr-find-") as tmp:
        weights = resolve_weights(opts, tmp)
        net = models.build(opts.architecture, meta.input.shape, len(meta.classes), weights=weights, width=opts.width,
                           depth=opts.depth, dropout=opts.dropout, augment=opts.augment, seed=opts.seed)
    optimizer = keras.optimizers.Adam(learning_rate=start_lr)
    net.compile(optimizer=optimizer, loss=keras.losses.CategoricalCrossentropy(label_smoothing=opts.label_smoothing))
    batches = iter(_input(records.make_dataset(dataset_dir, meta, "train", opts.batch_size, shuffle=True,
                                               seed=opts.seed, repeat=True), len(meta.classes)))
    rates, losses, average, stopped = [], [], 0.0, f"reached end_lr {end_lr:g}"
    for step in range(steps):
        rate = rate_at(step, steps, start_lr, end_lr)
        optimizer.learning_rate = rate  # a variable: read by the traced step, nothing retraced
        x, y = next(batches)
        loss = float(np.asarray(net.train_on_batch(x, y)).reshape(-1)[0])
        if not math.isfinite(loss):
            stopped = f"loss not finite at rate {rate:.3g}"
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        rates.append(rate)
        losses.append(smoothed)
        if step >= 10 and smoothed > EXPLODED * min(losses):
            stopped = f"loss exploded at rate {rate:.3g}"
            break
    if len(losses) < 3:
        raise ValueError(f"lr-find: {stopped} after {len(losses)} steps; lower start_lr")
    low = min(range(len(losses)), key=losses.__getitem__)
    result = LrFind(suggested=rates[steepest(rates, losses)], min_loss_rate=rates[low], steps_run=len(losses),
                    stopped=stopped, rates=rates, losses=losses)
    if output_html:
        storage.atomic_write_text(output_html, page(result, opts))
    print(f"lr-find: {opts.architecture}, batch {opts.batch_size}, {result.steps_run} steps ({result.stopped}); "
          f"suggested learning_rate {result.suggested:.2g} (steepest descent), minimum loss at "
          f"{result.min_loss_rate:.2g} (a tenth: {result.min_loss_rate / 10:.2g})"
          + (f"; curve: {output_html}" if output_html else ""), flush=True)
    return result


def page(result: LrFind, opts: TrainOptions) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(result.rates, result.losses, "-", lw=1.5, label="smoothed training loss")
    ax.axvline(result.suggested, color="tab:orange", ls="--", lw=1, label=f"suggested {result.suggested:.2g}")
    ax.axvline(result.min_loss_rate, color="tab:green", ls=":", lw=1, label=f"minimum {result.min_loss_rate:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return reports.page(f"Learning-rate range test: {opts.architecture}", [
        ("Loss against learning rate", reports.img(reports.fig_to_data_uri(fig), "loss against learning rate")),
        ("Result", reports.table(None, [
            ["suggested learning_rate (steepest descent)", f"{result.suggested:.3g}"],
            ["loss minimum at", f"{result.min_loss_rate:.3g}"],
            ["steps", result.steps_run], ["stopped", result.stopped],
            ["batch size", opts.batch_size], ["current learning_rate option", f"{opts.learning_rate:g}"]]))])
