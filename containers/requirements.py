"""Print the package's pinned runtime requirements from pyproject.toml, one per line.

The images install these in a layer of their own before the source is copied, so editing code does
not reinstall TensorFlow; `--without NAME` drops one (the GPU image keeps its base image's TensorFlow).
"""
import argparse
import re
import tomllib

parser = argparse.ArgumentParser()
parser.add_argument("pyproject")
parser.add_argument("--without", action="append", default=[], metavar="NAME")
args = parser.parse_args()
with open(args.pyproject, "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
drop = {n.lower() for n in args.without}
for dep in deps:
    if re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower() not in drop:
        print(dep)
