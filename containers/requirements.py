"""Print the package's pinned runtime requirements from pyproject.toml, one per line.

The images install these in a layer of their own before the source is copied, so editing code does
not reinstall TensorFlow. `--cuda` (the GPU image) swaps the CPU builds for the CUDA ones at the same
versions: `tensorflow-cpu==V` for `tensorflow[and-cuda]==V`, and `jax[cpu]==V` for `jax[cuda12]==V`
where JAX is a runtime requirement (multi-worker training runs Keras on JAX). Each version stays declared
once, in pyproject.toml, so the GPU image cannot drift from the CPU one; the CUDA wheels come from the
projects' own extras, which bound them to the CUDA major version those releases were built for. Not an
optional extra in pyproject.toml: installed beside the CPU pin it would put two TensorFlow distributions
into one environment.
"""
import argparse
import re
import sys
import tomllib

# CPU requirement (name[extras]==VERSION) -> its CUDA form; tensorflow-cpu must be there, jax may be.
SWAPS = [(r"tensorflow[-_]cpu", "tensorflow[and-cuda]", True), (r"jax\[cpu\]", "jax[cuda12]", False)]

parser = argparse.ArgumentParser()
parser.add_argument("pyproject")
parser.add_argument("--cuda", action="store_true", help="the CUDA builds of TensorFlow (and JAX) in place of the CPU ones")
args = parser.parse_args()
with open(args.pyproject, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
swapped = {cuda: 0 for _, cuda, _ in SWAPS}
for dep in deps:
    for cpu, cuda, _ in SWAPS if args.cuda else []:
        pin = re.fullmatch(rf"{cpu}\s*(==\s*\S+)", dep, flags=re.I)
        if pin:
            dep, swapped[cuda] = cuda + pin.group(1).replace(" ", ""), swapped[cuda] + 1
    print(dep)
for cpu, cuda, required in SWAPS if args.cuda else []:
    if swapped[cuda] > 1 or (required and swapped[cuda] != 1):
        sys.exit(f"--cuda: expected one exact '{cpu.replace('[-_]', '-').replace(chr(92), '')}==VERSION' pin "
                 f"in {args.pyproject}, found {swapped[cuda]}")
