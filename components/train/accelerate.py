"""What the train step runs on: the devices it sees, the precision policy, and multi-device replication.

Everything is decided automatically from the hardware (mixed float16 and all GPUs on NVIDIA, mixed
bfloat16 on CPUs that compute bfloat16 natively, plain float32 on other CPUs) and can be overridden by the
step's parameters. Only the replication strategy is
backend-specific: TensorFlow replicates with `tf.distribute.MirroredStrategy`, JAX with Keras'
`DataParallel` distribution; the model code is the same for both.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from imgclf.components.train.options import DISTRIBUTE, PRECISIONS


@dataclass
class Setup:
    backend: str
    devices: list[str]
    precision: str
    replicas: int
    jit_compile: bool | str

    def describe(self) -> str:
        return (f"backend {self.backend}; devices {', '.join(self.devices)}; precision {self.precision}; "
                f"replicas {self.replicas}; XLA {self.jit_compile}")


def devices() -> list[str]:
    """Devices as Keras sees them ("gpu:0", "cpu:0"), with the GPU model where the backend tells it."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]
    return list(keras.distribution.list_devices())


def _gpus(found: list[str]) -> list[str]:
    return [d for d in found if d.lower().startswith(("gpu", "cuda"))]


# CPU flags (as /proc/cpuinfo spells them) of the instructions oneDNN runs bfloat16 convolutions and matrix
# products on: AVX-512 BF16 (Zen 4, Cooper Lake) and AMX (Sapphire Rapids and later).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags; empty where there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def choose_precision(precision: str, found: list[str], backend: str = "tensorflow",
                     flags: set[str] | None = None) -> str:
    """float16 with loss scaling is what NVIDIA tensor cores are fast at. On a CPU with native bfloat16
    (and TensorFlow's oneDNN kernels, on by default on x86 Linux) mixed bfloat16 trains the baseline
    markedly faster at the same validation accuracy (an interleaved A/B on a Zen 4 CPU; training figures
    in docs/performance.md); the variables and the saved model stay float32. Elsewhere (JAX's CPU
    backend, oneDNN switched off, older CPUs) bfloat16 is emulated, so float32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if _gpus(found):
        return "mixed_float16"
    flags = cpu_flags() if flags is None else flags
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")
    if backend == "tensorflow" and onednn and flags & set(BF16_CPU_FLAGS):
        return "mixed_bfloat16"
    return "float32"


def _jit(jit_compile: str) -> bool | str:
    value = {"auto": "auto", "true": True, "false": False}.get(str(jit_compile).lower())
    if value is None:
        raise ValueError(f"jit_compile must be auto, true or false, got {jit_compile!r}")
    return value


@contextlib.contextmanager
def setup(precision: str = "auto", distribute: str = "auto", jit_compile: str = "auto"):
    """Set the precision policy and, across several devices, the replication scope; build and compile
    the model inside this block. Yields a `Setup`; the global batch is `batch_size * setup.replicas`.

    `distribute`: auto = replicate over all GPUs when there are two or more; mirrored = replicate over
    every device of the main kind (GPUs, else CPUs); none = one device.
    """
    import keras

    if distribute not in DISTRIBUTE:
        raise ValueError(f"distribute must be one of {', '.join(DISTRIBUTE)}, got {distribute!r}")
    found = devices()
    backend = keras.backend.backend()
    policy = choose_precision(precision, found, backend)
    gpus = _gpus(found)
    targets = gpus or found
    replicate = (distribute == "mirrored" and len(targets) > 1) or (distribute == "auto" and len(gpus) > 1)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        if not replicate:
            yield Setup(backend, found, policy, 1, _jit(jit_compile))
        elif backend == "tensorflow":
            import tensorflow as tf

            names = [d.name for d in tf.config.list_logical_devices("GPU" if gpus else "CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=names)
            with strategy.scope():
                yield Setup(backend, found, policy, strategy.num_replicas_in_sync, _jit(jit_compile))
        elif backend == "jax":
            import jax

            kind = "gpu" if gpus else "cpu"
            dist = keras.distribution.DataParallel(devices=[d for d in jax.devices() if d.platform == kind])
            keras.distribution.set_distribution(dist)
            try:
                yield Setup(backend, found, policy, len(dist.device_mesh.devices.flatten()), _jit(jit_compile))
            finally:
                keras.distribution.set_distribution(None)
        else:
            raise ValueError(f"multi-device training is supported on the tensorflow and jax backends, "
                             f"not {backend}")
    finally:
        keras.config.set_dtype_policy(previous)
