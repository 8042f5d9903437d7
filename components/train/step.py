"""Train: fit a Keras 3 model on preprocess's TFRecords, keep the best epoch, save `.keras` + history.

Transfer-learning families train in two phases, as in the classic tutorials: a new head on the frozen
pretrained backbone (on bottleneck features computed once, see features.py, when `cache_features`
says so), then (with `fine_tune_layers`) the backbone's top layers at a lower learning rate. The training
state goes to `backup_uri` (every `backup_seconds`, see checkpoint.py), so a retried task resumes.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from imgclf.components.contracts import HISTORY_FILE, MODEL_FILE, TENSORBOARD_DIR, RecordsMetadata, TrainedModel
from imgclf.components.lib import records, reports, storage
from imgclf.components.lib.options import fingerprint, takes
from imgclf.components.train.options import TrainOptions


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run stops, and no model is saved."""


def _finite_loss_guard():
    """Stops a fit at the end of the first epoch whose loss is not finite, before it is backed up or kept:
    a NaN model must never reach evaluate, the gate or the registry."""
    import math

    import keras

    class FiniteLoss(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            bad = {k: v for k, v in (logs or {}).items() if k.endswith("loss") and not math.isfinite(float(v))}
            if bad:
                raise TrainingDiverged(f"train: {', '.join(f'{k} {v}' for k, v in bad.items())} at epoch {epoch + 1}: "
                                       "the model diverged; lower learning_rate (or check the data). Nothing was saved.")
    return FiniteLoss()


@dataclass
class TrainResult:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    best_val_accuracy: float
    train_accuracy: float
    seconds: float
    images_per_second: float
    first_epoch_images_per_second: float
    epoch_seconds: float
    input_wait_share: float
    replicas: int
    resumed_from_epoch: int
    time_budget_seconds: float = 0.0
    """The `time_budget` in seconds (0: none); `budget_held` says whether training ended within it."""
    budget_held: bool | None = None


def class_weights(spec: str, classes: list[str], counts: dict[str, int]) -> dict[int, float] | None:
    """auto: weight each class by total / (classes x its count), so every class weighs the same in the
    loss (1.0 everywhere on balanced data); none; or explicit "name=weight,..." (others 1.0)."""
    spec = spec.strip()
    if spec == "none":
        return None
    if spec == "auto":
        total = sum(counts.values())
        return {i: round(total / (len(classes) * max(1, counts.get(c, 0))), 4) for i, c in enumerate(classes)}
    weights = {i: 1.0 for i in range(len(classes))}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in classes:
            raise ValueError(f"class_weight: {item!r} is not name=weight for a class of {classes}")
        weights[classes.index(name)] = float(value)
    return weights


def _schedule(kind: str, learning_rate: float, steps: int):
    import keras

    if kind == "cosine":
        return keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=max(1, steps), alpha=0.01)
    return learning_rate


def _compile(net, run: _Session, epochs: int, learning_rate: float | None = None) -> None:
    """Compile `net` for `epochs` epochs of this run: the options (schedule, label smoothing) and the
    hardware's XLA choice come from the run itself, so every phase compiles alike; only the learning rate
    (fine-tuning's is lower) and the number of epochs differ."""
    import keras

    o = run.opts
    lr = o.learning_rate if learning_rate is None else learning_rate
    net.compile(optimizer=keras.optimizers.Adam(_schedule(o.lr_schedule, lr, epochs * run.steps)),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=o.label_smoothing),
                metrics=["accuracy"], jit_compile=run.hw.jit_compile)


def weights_name(opts: TrainOptions) -> str:
    """The `weights` option with `auto` decided: imagenet for the transfer families, none for baseline."""
    from imgclf.components.train import models

    if opts.weights != "auto":
        return opts.weights
    return "imagenet" if models.is_transfer(opts.architecture) else "none"


def resolve_weights(opts: TrainOptions, tmp: str) -> str | None:
    """What models.build takes: None, "imagenet", or a local weights file (a bucket's staged in `tmp`)."""
    weights = weights_name(opts)
    return None if weights == "none" else weights if weights == "imagenet" else _local(weights, tmp)


def _local(uri: str, tmp: str) -> str:
    """TensorFlow and Keras read local files only: stage a bucket object first."""
    if storage.is_local(uri):
        return storage.local_path(uri)
    dest = str(Path(tmp) / Path(uri.rstrip("/")).name)
    storage.download_file(uri, dest)
    return dest


def warm_start_from(net, source: str, tmp: str):
    """Copy an earlier model's weights into `net`, the model this run trains, wherever a layer plays the same
    role with the same shapes (see models.copy_weights: by name, then in order within one architecture): a
    champion with the same classes gives every layer, one with other classes all but the head. Returns the
    models.WarmStart report, whose str() is the log line.

    Raises ValueError when no layer at all fits (another architecture): whoever passes warm_start_from
    asked for a warm start, and a run that silently trained from scratch would not be one."""
    import keras

    from imgclf.components.lib import layers  # noqa: F401 - registers the custom layers the file may hold
    from imgclf.components.train import models

    if not source.endswith(".keras"):
        source = storage.join(source, MODEL_FILE)
    old = keras.saving.load_model(_local(source, tmp), compile=False)
    report = models.copy_weights(old, net)
    if not report.copied:
        raise ValueError(f"warm_start_from {source}: no layer of that model fits this one ({net.name}): "
                         f"{report.why_nothing()}")
    return report


class _SyncDir:
    """Mirror a local folder (TensorBoard logs) to a store after each epoch, so runs can be watched live."""

    def __init__(self, local: Path, uri: str):
        self.local, self.uri, self.sizes = local, uri, {}

    def __call__(self, *_):
        for f in self.local.rglob("*"):
            if f.is_file() and self.sizes.get(f) != f.stat().st_size:
                storage.copy_file(str(f), storage.join(self.uri, f.relative_to(self.local).as_posix()))
                self.sizes[f] = f.stat().st_size


@dataclass
class _Session:
    """What the phases of one training share: the data, the model, the hardware and the saved state."""
    opts: TrainOptions
    meta: RecordsMetadata
    hw: object
    train_ds: object
    val_ds: object
    stamps: object
    steps: int
    monitor: str
    backup: object
    resume: dict | None
    state: dict
    extra_callbacks: list
    net: object = None
    planner: object = None
    """budget.Planner when a `time_budget` plans the epochs, else None."""

    @property
    def history(self) -> dict:
        return self.state["history"]


@takes(TrainOptions)
def train(dataset_dir: str, model_dir: str, opts: TrainOptions, *, backup_uri: str = "",
          curves_html: str = "") -> TrainResult:
    """Fit with EarlyStopping on validation loss and keep the best epoch's weights.

    `backup_uri` receives the training state every `backup_seconds` (a retried task resumes from it);
    `curves_html`, if given, receives a learning-curve page (the KFP HTML artifact).

    With `train_workers` > 1 this process is one worker of a cluster its environment describes, or, with
    none there, starts the workers itself on this machine (see distributed.py); only the chief writes.
    """
    from imgclf.components.train import distributed

    # Before Keras and JAX compute anything: a worker joins its cluster first.
    cluster = distributed.cluster_from_environment()
    if cluster is None and opts.train_workers > 1:
        return distributed.launch_local(opts.train_workers, dataset_dir, model_dir, opts, backup_uri, curves_html)
    distributed.start(cluster, opts.train_workers)
    if cluster is not None and not all(storage.is_local(p) for p in (dataset_dir, model_dir, curves_html) if p):
        from imgclf.components.train import cluster_jobs

        # A worker of a cluster job gets store URIs: trains on local copies, the chief's outputs uploaded.
        with cluster_jobs.staged(dataset_dir, model_dir, curves_html) as (dataset_dir, model_dir, curves_html):
            return train(dataset_dir, model_dir, opts=opts, backup_uri=backup_uri, curves_html=curves_html)

    import keras

    from imgclf.components.train import checkpoint, features, models, throughput

    throughput.watch_seconds()  # a bad IMGCLF_FIT_WATCH_SECONDS is refused before any work
    meta = RecordsMetadata.load(dataset_dir)
    keras.utils.set_random_seed(opts.seed)
    tmp = tempfile.mkdtemp(prefix="imgclf-train-")
    model_dir, curves_html, opts = distributed.chief_outputs(model_dir, curves_html, opts, tmp)
    # Every worker resumes from the chief's backup and saves at the chief's times; only the chief uploads.
    backup = checkpoint.Backup(backup_uri, opts.backup_seconds, writes=distributed.is_chief(),
                               agree=distributed.agree)
    resume = backup.restore()
    weights, weights_arg = weights_name(opts), resolve_weights(opts, tmp)
    cw = class_weights(opts.class_weight, meta.classes, meta.splits["train"].per_class)

    cached = features.wanted(opts.cache_features, opts.architecture, weights_arg is not None, opts.augment)
    if cached and distributed.active():
        print("train: no bottleneck-feature cache with several workers: the head trains on images", flush=True)
        cached = False

    with distributed.setup(opts.precision, opts.distribute, opts.jit_compile) as hw:
        run = make_session(dataset_dir, meta, opts, hw, backup, resume, Path(tmp) / TENSORBOARD_DIR)
        # A head-phase checkpoint holds the head alone: the whole model is rebuilt around it.
        head_checkpoint = bool(resume and resume.get("features") and resume["phase"] == 1)
        run.net = resume_model(run) if resume and not head_checkpoint else build_model(run, weights_arg, tmp)
        print(f"train: {opts.architecture} on {meta.count('train')} images {meta.input.shape}, "
              f"{len(meta.classes)} classes, {run.net.count_params():,} parameters "
              f"({_trainable(run.net):,} trainable), weights {weights}; {hw.describe()}; "
              f"global batch {opts.batch_size * hw.replicas}", flush=True)
        fit_cw = cw if cw and len(set(cw.values())) > 1 else None  # all equal: skip the per-batch lookup
        start = time.perf_counter()
        run.planner = plan_budget(opts, fine_tuning=models.is_transfer(opts.architecture)
                                  and weights_arg is not None and opts.fine_tune_layers > 0)
        if run.state["phase"] == 1:
            if cached:
                fit_head_on_features(run, dataset_dir, tmp, fit_cw)
            else:
                fit(run, 1, opts.epochs, run.state["epoch"], resume, fit_cw)
            run.state["phase1_epochs"] = len(run.history.get("loss", []))
        if models.is_transfer(opts.architecture) and weights_arg is not None and opts.fine_tune_layers > 0:
            fine_tune(run, fit_cw)
        seconds = time.perf_counter() - start
        backup.load_best(run.net)

    result = summarize(run, seconds)
    save_model(model_dir, run, weights, cw, result, Path(tmp) / TENSORBOARD_DIR)
    backup.clear()
    shutil.rmtree(tmp, ignore_errors=True)
    if curves_html:
        storage.atomic_write_text(curves_html, reports.page(f"Training: {opts.architecture}", [
            ("Learning curves", reports.img(reports.fig_to_data_uri(
                reports.learning_curves(run.history, result.best_epoch)), "learning curves")),
            ("Summary", reports.table(None, [[k, v] for k, v in asdict(result).items()]))]))
    # Time in fit but in no epoch: some pipelines spent tens of seconds there and the step alone never did;
    # shown on every run, split into before or between epochs and after the last, so the next one is placed.
    before = sum(run.history.get("seconds_before_epoch", []))
    after = result.seconds - sum(run.history.get("epoch_seconds", [])) - before
    print(f"train: {result.epochs_run} epochs in {result.seconds:.1f}s (outside the epochs: {max(0.0, before):.1f}s "
          f"before or between them, {max(0.0, after):.1f}s after the last); steady {result.images_per_second:.0f} "
          f"images/s (first epoch {result.first_epoch_images_per_second:.0f}), input wait "
          f"{result.input_wait_share:.1%} of step time; best epoch {result.best_epoch}: "
          f"val_accuracy {result.best_val_accuracy:.4f}" + _budget_words(result), flush=True)
    return result


def _budget_words(result: TrainResult) -> str:
    from imgclf.components.train import budget

    if not result.time_budget_seconds:
        return ""
    over = result.seconds - result.time_budget_seconds
    return (f"; time budget {budget.words(result.time_budget_seconds)} "
            + ("held" if result.budget_held else f"exceeded by {budget.words(over)}"))


def _trainable(net) -> int:
    import numpy as np

    return sum(int(np.prod(w.shape)) for w in net.trainable_weights)


def make_session(dataset_dir: str, meta: RecordsMetadata, opts: TrainOptions, hw, backup, resume,
                 tb_local: Path) -> _Session:
    """The input pipelines (one endless, reshuffled training iterator) and the state to continue."""
    from imgclf.components.train import distributed, throughput

    global_batch = opts.batch_size * hw.replicas
    stamps = throughput.InputStamps()
    train_ds = _input(distributed.whole_batches(
        records.make_dataset(dataset_dir, meta, "train", global_batch, shuffle=True, seed=opts.seed, prefetch=False,
                             repeat=True), meta.count("train"), global_batch, "train", endless=True),
        len(meta.classes), stamps)
    has_val = meta.count("validation") > 0
    val_batch = distributed.validation_batch(meta.count("validation"), opts.batch_size, hw.replicas)
    val_ds = _input(distributed.whole_batches(
        records.make_dataset(dataset_dir, meta, "validation", val_batch, prefetch=False),
        meta.count("validation"), val_batch, "validation"), len(meta.classes)) if has_val else None
    monitor = "val_loss" if has_val else "loss"
    state = resume or {"phase": 1, "epoch": 0, "history": {}, "best": None, "wait": 0, "best_epoch": 0,
                       "phase1_epochs": None}
    extra = _extra_callbacks(tb_local, opts.tensorboard_uri, opts.lr_schedule, monitor, opts.patience)
    return _Session(opts, meta, hw, train_ds, val_ds, stamps, -(-meta.count("train") // global_batch), monitor,
                    backup, resume, state, extra)


def network(run: _Session, weights):
    """The network the options describe, under the current dtype policy."""
    from imgclf.components.train import models

    o = run.opts
    return models.build(o.architecture, run.meta.input.shape, len(run.meta.classes), weights=weights, width=o.width,
                        depth=o.depth, dropout=o.dropout, augment=o.augment, seed=o.seed)


def build_model(run: _Session, weights, tmp: str):
    """A new model (optionally warm-started from an earlier one's weights), compiled for phase 1.

    Every model built from scratch in a run comes from here, so the warm start applies to each alike: the
    first attempt's, and the one rebuilt around a head-phase checkpoint when a retried task resumes on
    bottleneck features (its backbone must be the warm-started one the saved features came from). The
    weights go into the network that trains, under the run's dtype policy (the float32 copy saved at the
    end takes that network's weights); a resume from a whole-model checkpoint already holds them."""
    o = run.opts
    net = network(run, weights)
    if o.warm_start_from:
        print(f"train: warm start from {o.warm_start_from}: {warm_start_from(net, o.warm_start_from, tmp)}",
              flush=True)
    _compile(net, run, o.epochs)
    return net


def resume_model(run: _Session):
    """The model, optimizer state and step counter of the last finished epoch of an earlier attempt."""
    import keras

    print(f"train: resuming from epoch {run.resume['epoch']} (phase {run.resume['phase']}) saved at "
          f"{run.backup.uri}", flush=True)
    return keras.saving.load_model(run.backup.checkpoint_file)


def plan_budget(opts: TrainOptions, fine_tuning: bool):
    """The time budget's planner (None without a budget): phase 1 and fine-tuning share it in proportion
    to their maximum epochs."""
    from imgclf.components.train import budget

    seconds = budget.parse_duration(opts.time_budget)
    if not seconds:
        return None
    phases = [opts.epochs] + ([opts.fine_tune_epochs] if fine_tuning else [])
    print(f"train: time budget {budget.words(seconds)}: the epochs (at most {' + '.join(map(str, phases))}) and "
          f"the schedule are planned from the first epochs' time; EarlyStopping does not cut the plan short",
          flush=True)
    return budget.Planner(seconds, phases)


def fit(run: _Session, phase: int, total_epochs: int, initial_epoch: int, resumed: dict | None, class_weight,
        whole=None) -> None:
    """One phase's plain `fit`, with throughput, resumable EarlyStopping and the per-epoch backup (and,
    with a time budget, the planned epochs and schedule: budget.py)."""
    from imgclf.components.train import budget, checkpoint, distributed, throughput

    # A planned schedule runs to its end (the best epoch's weights are kept either way): no early stop.
    patience = run.opts.patience if run.planner is None else total_epochs + 1
    stopper = checkpoint.ResumableEarlyStopping(run.monitor, patience, resumed)
    extra_state = {"phase1_epochs": run.state.get("phase1_epochs"), "features": whole is not None,
                   "planned_epochs": (resumed or {}).get("planned_epochs")}
    saver = checkpoint.Checkpoint(run.backup, phase, run.history, run.monitor, run.state["best"], stopper,
                                  extra_state, whole)
    timer = [] if run.planner is None else [budget.callback(
        run.planner, phase, 0 if phase == 1 else run.state["phase1_epochs"], total_epochs, run.steps, extra_state,
        agree=distributed.chief_number if distributed.active() else None)]
    # The budget's callback first: the saver then backs up the plan it just made.
    callbacks = [_finite_loss_guard(), throughput.Throughput(run.stamps, run.meta.count("train")), *timer, stopper,
                 saver, *run.extra_callbacks]
    # shuffle=False: the tf.data pipeline already reshuffles every epoch.
    try:
        run.net.fit(run.train_ds, validation_data=run.val_ds, epochs=total_epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=run.steps, class_weight=class_weight, callbacks=callbacks, verbose=2,
                    shuffle=False, **distributed.validation_steps(run.val_ds))
    finally:
        throughput.end_gap()
    run.state["best"] = saver.best


def fit_head_on_features(run: _Session, dataset_dir: str, tmp: str, class_weight) -> None:
    """Phase 1 on bottleneck features: the backbone runs once per image, the head trains on its output for
    every epoch, and each improvement is kept as the whole model's weights (head put back in)."""
    import dataclasses

    import keras

    from imgclf.components.train import features

    o, meta, batch = run.opts, run.meta, run.opts.batch_size * run.hw.replicas
    local = Path(tmp) / features.FOLDER
    splits = ["train"] + (["validation"] if run.val_ds is not None else [])
    index = features.compute(dataset_dir, meta, run.net, splits, batch, local, run.backup.uri)
    n = len(meta.classes)
    train_ds = _input(features.make_dataset(local, index, "train", meta.count("train"), batch, shuffle=True,
                                            seed=o.seed, repeat=True), n, run.stamps)
    val_ds = _input(features.make_dataset(local, index, "validation", meta.count("validation"), batch), n) \
        if run.val_ds is not None else None
    if run.resume and run.resume.get("features"):
        head = keras.saving.load_model(run.backup.checkpoint_file)
    else:
        head = features.head(run.net)
        _compile(head, run, o.epochs)
    # The whole model takes no optimizer step here; built now, the weights it saves and loads agree.
    run.net.optimizer.build(run.net.trainable_variables)
    print(f"train: head phase on cached bottleneck features ({index['dim']} per image, "
          f"{_trainable(head):,} trainable parameters)", flush=True)
    fit(dataclasses.replace(run, net=head, train_ds=train_ds, val_ds=val_ds), 1, o.epochs, run.state["epoch"],
        run.resume, class_weight, whole=lambda h: features.assemble(h, run.net))


def fine_tune(run: _Session, class_weight) -> None:
    """Phase 2: from phase 1's best weights, the backbone's top layers (BatchNormalization frozen) at
    learning_rate x fine_tune_lr_factor."""
    from imgclf.components.train import models

    o, resume = run.opts, run.resume
    phase1 = run.state["phase1_epochs"]
    resumed_in_phase2 = bool(resume and resume["phase"] == 2 and resume["epoch"] > phase1)
    if not resumed_in_phase2:
        run.backup.load_best(run.net)
        opened = models.unfreeze_top(run.net, o.fine_tune_layers)
        lr = o.learning_rate * o.fine_tune_lr_factor
        _compile(run.net, run, o.fine_tune_epochs, learning_rate=lr)
        print(f"train: fine-tuning the top {o.fine_tune_layers} backbone layers ({opened} trainable, "
              f"BatchNormalization frozen) at learning rate {lr:g}", flush=True)
    fit(run, 2, phase1 + o.fine_tune_epochs, resume["epoch"] if resumed_in_phase2 else phase1,
        resume if resumed_in_phase2 else None, class_weight)


def summarize(run: _Session, seconds: float) -> TrainResult:
    from imgclf.components.train import throughput

    history = run.history
    losses = history[run.monitor]
    best = min(range(len(losses)), key=losses.__getitem__)
    speed = throughput.summary(history)
    return TrainResult(
        epochs_run=len(losses), best_epoch=best + 1, best_val_loss=losses[best],
        best_val_accuracy=history.get("val_accuracy", history["accuracy"])[best],
        train_accuracy=history["accuracy"][best], seconds=round(seconds, 2),
        images_per_second=speed["images_per_second"],
        first_epoch_images_per_second=speed["first_epoch_images_per_second"],
        epoch_seconds=speed["epoch_seconds"], input_wait_share=speed["input_wait_share"],
        replicas=run.hw.replicas, resumed_from_epoch=run.resume["epoch"] if run.resume else 0,
        time_budget_seconds=run.planner.budget_s if run.planner else 0.0,
        budget_held=run.planner.held() if run.planner else None)


def save_model(model_dir: str, run: _Session, weights: str, cw, result: TrainResult, tb_local: Path) -> None:
    """model.keras, history.json, tensorboard/ and train.json (every option as given) in one atomic step."""
    hw = run.hw
    with storage.atomic_dir(model_dir) as out:
        float32_model(run).save(out / MODEL_FILE)
        (out / HISTORY_FILE).write_text(json.dumps(run.history, indent=1))
        if tb_local.exists():
            shutil.copytree(tb_local, out / TENSORBOARD_DIR)
        # Class weights by class name: a reader of train.json or the model card should not need the index order.
        named = {run.meta.classes[i]: w for i, w in cw.items()} if cw else cw
        params = {**run.opts.to_dict(), "weights": weights, "class_weight": named}
        hardware = {"backend": hw.backend, "devices": hw.devices, "precision": hw.precision, "replicas": hw.replicas,
                    "global_batch": run.opts.batch_size * hw.replicas, "jit_compile": str(hw.jit_compile),
                    "libraries": reports.versions()}
        TrainedModel(run.opts.architecture, run.meta.input, run.meta.data_fingerprint, run.meta.fingerprint, params,
                     hardware, asdict(result), fingerprint(run.opts)).save(out)


def float32_model(run: _Session):
    """The trained network with float32 computation. A model trained under a mixed policy keeps float32
    variables but computes in float16 or bfloat16, and saved as it is, evaluate, export and every server
    would too, slowly or emulated on hardware without those units. The same network built under float32
    takes the same variables."""
    import keras

    if run.hw.precision == "float32":
        return run.net
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        twin = network(run, None)
    finally:
        keras.config.set_dtype_policy(previous)
    ours, theirs = run.net.weights, twin.weights
    if [tuple(w.shape) for w in ours] != [tuple(w.shape) for w in theirs]:
        raise RuntimeError("train: the float32 copy of the model does not have the trained model's weights")
    twin.set_weights([w.numpy() for w in ours])
    _copy_trainable(run.net, twin)
    return twin


def _copy_trainable(source, target) -> None:
    """Fine-tuning opened some backbone layers; the saved model says which, as the trained one does."""
    target.trainable = source.trainable
    for a, b in zip(getattr(source, "layers", []), getattr(target, "layers", [])):
        _copy_trainable(a, b)


def _epoch_tensorboard(log_dir: str):
    import keras

    class EpochTensorBoard(keras.callbacks.TensorBoard):
        """Keras' TensorBoard at its default epoch granularity, without the per-batch work: Keras 3.15
        still calls `summary.scalar` for every batch's logs when `update_freq="epoch"`, with no writer
        set, so nothing is written: measurable time per batch under cProfile, for nothing."""

        def on_train_batch_end(self, batch, logs=None):
            if self.update_freq != "epoch" or self._should_trace or self.write_steps_per_second:
                super().on_train_batch_end(batch, logs)

    return EpochTensorBoard(log_dir=log_dir, write_graph=False)


def _input(ds, num_classes: int, stamps=None):
    """One-hot labels (label smoothing needs them), the throughput stamp, then prefetch."""
    import tensorflow as tf

    ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    if stamps is not None:
        ds = stamps.attach(ds)
    # No autotuning model: its thread sleeps out an optimization period that doubles up to 60 s, and
    # deleting the iterator at the end of fit waits for it with the GIL held (py-spy: RootDataset::Iterator's
    # destructor joining that thread), which cost pipeline runs tens of seconds after their last epoch. AUTOTUNE
    # then means one parallel call per core and prefetch's own buffer sizing; the input wait stays ~0.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def _extra_callbacks(tb_local: Path, tensorboard_uri: str, lr_schedule: str, monitor: str, patience: int) -> list:
    import keras

    extra = []
    if lr_schedule == "plateau":
        extra.append(keras.callbacks.ReduceLROnPlateau(monitor=monitor, factor=0.2, patience=max(1, patience // 2),
                                                       verbose=1))
    try:
        import tensorboard  # noqa: F401
        import tensorflow  # noqa: F401 - Keras' TensorBoard writer needs both, whatever the backend
    except ImportError:
        print("train: TensorFlow/TensorBoard not installed; no TensorBoard logs", flush=True)
        return extra
    extra.append(_epoch_tensorboard(str(tb_local)))
    if tensorboard_uri:
        extra.append(keras.callbacks.LambdaCallback(on_epoch_end=_SyncDir(tb_local, tensorboard_uri)))
    return extra
