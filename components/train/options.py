"""Train's options, declared once (see components/lib/options.py for what is derived from them).

No Keras here: the pipeline's first task validates these in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgclf.components.lib.options import Seeded, option

# The networks components/train/models.py builds (it checks, on import, that it builds exactly these).
ARCHITECTURES = ("baseline", "mobilenet_v2", "efficientnet_v2_b0", "inception_v3", "resnet50_v2", "vgg16")
LR_SCHEDULES = ("cosine", "constant", "plateau")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
DISTRIBUTE = ("auto", "none", "mirrored")
JIT_COMPILE = ("auto", "true", "false")
CACHE_FEATURES = ("auto", "on", "off")


def class_weight_problem(spec: str) -> str:
    """auto, none, or name=weight,... with positive finite weights (class names are checked in train)."""
    import math

    if spec.strip() in ("auto", "none"):
        return ""
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name or not math.isfinite(weight) or weight <= 0:
            return f"{item!r} is not name=weight with a positive weight"
    return ""


def budget_problem(text: str) -> str:
    from imgclf.components.train.budget import duration_problem

    return duration_problem(text)


@dataclass(frozen=True, kw_only=True)
class TrainOptions(Seeded):
    architecture: str = option("baseline", "the network: the tutorials' small CNN or a keras.applications "
                                           "transfer family", choices=ARCHITECTURES)
    weights: str = option("auto", "transfer families: auto (imagenet; baseline: none), imagenet, none, or a "
                                  "weights file of the backbone without its top (path or gs:// / s3:// URI)",
                          path="read", keywords=("auto", "imagenet", "none"))
    epochs: int = option(20, "maximum epochs (EarlyStopping may stop sooner)", min=1, max=10_000)
    batch_size: int = option(32, "batch per device: with N replicas the global batch is N x batch_size",
                             min=1, max=65_536)
    learning_rate: float = option(0.001, "Adam learning rate", min=0, min_exclusive=True, max=10)
    lr_schedule: str = option("cosine", "cosine (decay to 1% over each phase), constant, or plateau (/5 when "
                                        "validation loss stalls)", choices=LR_SCHEDULES)
    width: int = option(32, "baseline CNN: filters of the first block (doubling per block)", min=1, max=4096)
    depth: int = option(3, "baseline CNN: conv/max-pool/dropout blocks", min=1, max=12)
    dropout: float = option(0.3, "dropout before the classification head", min=0, max=0.95)
    augment: bool = option(True, "random horizontal flip inside the model, training only (transfer families "
                                   "also rotate by up to 7 degrees and zoom by up to 5 %)")
    cache_features: str = option("auto", "head phase on bottleneck features computed once per split: auto (when "
                                         "the backbone is frozen and augment is off), on (also with augment: the "
                                         "head then sees unaugmented images), off", choices=CACHE_FEATURES)
    time_budget: str = option("", "finish training within this wall time (90s, 5m, 1h30m): after its first "
                                  "epochs the number of epochs (at most `epochs`) and the learning-rate "
                                  "schedule are planned to end on time, and EarlyStopping does not cut the "
                                  "plan short; empty: no budget", check=budget_problem)
    patience: int = option(5, "EarlyStopping patience in epochs", min=1)
    backup_seconds: float = option(30.0, "back up the training state (what a retried or preempted task resumes "
                                         "from) after the first epoch ending at least this long after the last "
                                         "backup; 0: after every epoch", min=0, max=86_400, identity=False)
    fine_tune_layers: int = option(0, "after the frozen-backbone phase, fine-tune the backbone's top N layers "
                                      "(BatchNormalization stays frozen); 0: no fine-tuning", min=0)
    fine_tune_epochs: int = option(10, "maximum epochs of the fine-tuning phase", min=1, max=10_000)
    fine_tune_lr_factor: float = option(0.1, "fine-tuning learning rate as a fraction of learning_rate",
                                        min=0, min_exclusive=True, max=1)
    label_smoothing: float = option(0.0, "categorical cross-entropy label smoothing", min=0, max=0.99)
    class_weight: str = option("auto", "auto (every class weighs the same, from the training counts), none, "
                                       "or comma-separated name=weight pairs", check=class_weight_problem)
    precision: str = option("auto", "auto (mixed_float16 on NVIDIA GPUs; mixed_bfloat16 on CPUs with native "
                                    "bfloat16 under TensorFlow; else float32) or a Keras dtype policy; the saved "
                                    "model is float32 either way", choices=PRECISIONS)
    distribute: str = option("auto", "auto (replicate over all GPUs when there are 2 or more), mirrored "
                                     "(every device of the main kind), none", choices=DISTRIBUTE)
    jit_compile: str = option("auto", "XLA compilation: Keras' auto, true or false", choices=JIT_COMPILE)
    train_workers: int = option(1, "worker processes (nodes) training data-parallel; 1: one process",
                                min=1, max=256)
    tensorboard_uri: str = option("", "also mirror the TensorBoard logs here after every epoch (folder or "
                                      "bucket), to watch a run live", path="write", identity=False)
    warm_start_from: str = option("", "start from this earlier model's weights (a model folder or .keras "
                                      "file): every layer whose role and shapes match, all but the head when "
                                      "the classes differ", path="read", pipeline=False,
                                  identity=False)
