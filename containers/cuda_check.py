#!/usr/bin/env python3
"""The GPU image's CUDA check: the image build runs it (and fails unless it passes); on a GPU node,
`docker run --gpus all IMAGE imgclf-cuda-check --require-gpu` also proves the driver and a GPU work.

Why each check: a CPU-only TensorFlow (tensorflow-cpu pulled in by a dependency, or installed beside
the CUDA one) would train on the CPU without an error, and a CUDA library missing from the wheels, or
of another major version than TensorFlow was built for, only shows on the node as "Cannot dlopen some
GPU libraries" and a silent fall-back to the CPU. The build machine has no driver and no GPU, so
without --require-gpu no GPU is looked for: everything up to the driver is checked, nothing past it.
Prints one JSON line of what it found.
"""
import argparse
import ctypes
import glob
import importlib.metadata
import json
import os
import sys

# The libraries TensorFlow's GPU kernels open, by wheel folder (site-packages/nvidia/<folder>/lib) and
# file stem, in dependency order (each loads with RTLD_GLOBAL, so a later one finds the earlier ones).
# Their soname's major version: cuDNN's and the toolkit's own (CUDA_MAJOR) come from TensorFlow's build
# info; cuFFT, cuRAND, cuSOLVER and NCCL number theirs independently (any one major is accepted).
LIBRARIES = [
    ("cuda_runtime", "libcudart"), ("nvjitlink", "libnvJitLink"), ("cublas", "libcublasLt"),
    ("cublas", "libcublas"), ("cudnn", "libcudnn"), ("cufft", "libcufft"), ("curand", "libcurand"),
    ("cusparse", "libcusparse"), ("cusolver", "libcusolver"), ("nccl", "libnccl"), ("cuda_cupti", "libcupti"),
]
CUDA_MAJOR = {"libcudart", "libnvJitLink", "libcublasLt", "libcublas", "libcusparse", "libcupti"}


def fail(message: str) -> None:
    sys.exit(f"imgclf-cuda-check: {message}")


def version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="imgclf-cuda-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--require-gpu", action="store_true",
                        help="also fail unless TensorFlow sees a GPU and runs a matrix product on it")
    args = parser.parse_args(argv)

    tensorflows = sorted(d.metadata["Name"] for d in importlib.metadata.distributions()
                         if d.metadata["Name"].lower().replace("_", "-") in {"tensorflow", "tensorflow-cpu",
                                                                            "tf-nightly", "tensorflow-intel"})
    if tensorflows != ["tensorflow"]:
        fail(f"expected the one TensorFlow distribution 'tensorflow', found {tensorflows}")
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    if not tf.test.is_built_with_cuda() or not build.get("is_cuda_build"):
        fail(f"TensorFlow {tf.__version__} is not a CUDA build")
    cuda_major = str(build["cuda_version"]).split(".")[0]
    majors = {stem: cuda_major for stem in CUDA_MAJOR} | {"libcudnn": str(build["cudnn_version"]).split(".")[0]}

    nvidia = os.path.join(os.path.dirname(os.path.dirname(tf.__file__)), "nvidia")
    loaded = {}
    for folder, stem in LIBRARIES:
        pattern = os.path.join(nvidia, folder, "lib", f"{stem}.so.{majors.get(stem, '[0-9]*')}")
        found = sorted(p for p in glob.glob(pattern) if p.rsplit(".so.", 1)[1].isdigit())
        if not found:
            fail(f"no {stem}.so.{majors.get(stem, 'N')} in the CUDA wheels (looked for {pattern})")
        try:
            ctypes.CDLL(found[-1], mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            fail(f"{found[-1]} does not load: {e}")
        loaded[os.path.basename(found[-1])] = os.path.relpath(found[-1], nvidia)

    facts = {"tensorflow": tf.__version__, "cuda": build["cuda_version"], "cudnn": build["cudnn_version"],
             "compute_capabilities": build.get("cuda_compute_capabilities"),
             "wheels": {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()
                        if d.metadata["Name"].lower().startswith("nvidia-")},
             "loaded": sorted(loaded)}
    # Multi-worker training runs Keras on JAX: where JAX is installed, its CUDA plugin must be too, at
    # JAX's version, or those workers would train on the CPU without a word.
    jax = version("jax")
    if jax:
        plugins = {name: version(name) for name in (f"jax-cuda{cuda_major}-plugin", f"jax-cuda{cuda_major}-pjrt")}
        if set(plugins.values()) != {jax}:
            fail(f"jax {jax} needs its CUDA {cuda_major} plugins at the same version, found {plugins}")
        facts["jax"] = jax
    gpus = tf.config.list_physical_devices("GPU")
    facts["gpus"] = [g.name for g in gpus]
    if args.require_gpu:
        if not gpus:
            fail("TensorFlow sees no GPU (is the NVIDIA driver new enough, and the container run with --gpus?)")
        with tf.device("/GPU:0"):
            product = tf.linalg.matmul(tf.ones((256, 256)), tf.ones((256, 256)))
        if not product.device.endswith("GPU:0") or float(product[0, 0]) != 256.0:
            fail(f"a matrix product on the GPU gave {float(product[0, 0])} on {product.device}")
        if jax:
            import jax as jx

            if not any(d.platform == "gpu" for d in jx.devices()):
                fail(f"JAX sees no GPU, only {jx.devices()}")
    print(json.dumps(facts, sort_keys=True))
    return facts


if __name__ == "__main__":
    main()
