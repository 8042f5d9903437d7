"""`python -m components <step> --flag value ...`: run one step's function directly.

This is the container entry point (`docker run IMAGE <step> ...`); flags come from the step's typed
signature, and the step's summary is printed as JSON on the last line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def steps() -> dict:
    from components import evaluate, export, gate, ingest, preprocess, publish, train

    return {"ingest": ingest.ingest, "preprocess": preprocess.preprocess, "train": train.train,
            "evaluate": evaluate.evaluate, "export": export.export, "gate": gate.gate, "publish": publish.publish}


def main(argv: list[str] | None = None) -> int:
    from components.cli_args import add_signature_args, call_with_args

    parser = argparse.ArgumentParser(prog="python -m components", description="Run one imgclf step.")
    sub = parser.add_subparsers(dest="step", required=True)
    for name, fn in steps().items():
        add_signature_args(sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0]), fn)
    args = parser.parse_args(argv)
    fn = steps()[args.step]
    result = call_with_args(fn, argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "step"}))
    if dataclasses.is_dataclass(result):
        print(json.dumps(dataclasses.asdict(result), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
