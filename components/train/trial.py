"""One trial of a sweep: train with the trial's options over the pipeline's, scored on the validation
split, and a failure kept as the trial's result instead of raised.

Why catch: in KFP (and kfp.local) one failed iteration fails the whole `dsl.ParallelFor`, so one bad
combination (a learning rate that diverges, a weights file that does not load) would throw away every
other trial. A pod that dies (preemption, an OOM kill) is not caught here: KFP retries the task and the
attempt resumes from its backup like a single train does.
"""
from __future__ import annotations

import dataclasses
import json
import time
import traceback

from imgclf.components.contracts import DatasetError, RecordsMetadata, TrialResult
from imgclf.components.lib.options import takes
from imgclf.components.train.options import TrainOptions
from imgclf.components.train.step import train


@takes(TrainOptions)
def run_trial(dataset_dir: str, model_dir: str, trial: str, opts: TrainOptions, *, backup_uri: str = "",
              curves_html: str = "") -> TrialResult:
    """`trial` is the sweep's JSON item {"index": i, "options": {...}}; `opts` the pipeline's train
    options, which the trial's own override."""
    spec = json.loads(trial)
    index, swept = int(spec["index"]), dict(spec["options"])
    start = time.perf_counter()
    try:
        if RecordsMetadata.load(dataset_dir).count("validation") == 0:
            raise DatasetError("no validation split: a sweep scores its trials on validation images only; "
                               "set val_fraction > 0 (or give the source a validation/ folder)")
        merged = dataclasses.replace(opts, **swept)
        print(f"trial {index}: {json.dumps(swept, sort_keys=True)}", flush=True)
        r = train(dataset_dir, model_dir, backup_uri=backup_uri, curves_html=curves_html, opts=merged)
        result = TrialResult(index, swept, "ok", "", r.best_val_accuracy, r.best_val_loss, r.epochs_run,
                             round(time.perf_counter() - start, 2))
    except Exception as e:  # noqa: BLE001 - a trial's failure is its result (see the module docstring)
        traceback.print_exc()
        cause = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        print(f"trial {index} failed: {cause}", flush=True)
        result = TrialResult(index, swept, "failed", cause, seconds=round(time.perf_counter() - start, 2))
    result.save(model_dir)
    print(f"trial {index}: {result.status}" + (f", val_accuracy {result.val_accuracy:.4f}, val_loss "
                                                f"{result.val_loss:.4f}" if result.status == "ok" else ""),
          flush=True)
    return result
