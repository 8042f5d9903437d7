"""`imgclf deploy TARGET`: serve a published registry version on one of the deploy step's targets
(components/deploy/options.py's SERVES, which its help text is derived from), with the deploy step's own
options (the pipeline's optional step after publish runs the same function)."""
from __future__ import annotations

import argparse

from imgclf.components.deploy.options import TARGETS as DEPLOY_TARGETS
from imgclf.components.deploy.options import served, targets_help

# The deploy step's targets (declared once, in its options) less "none": the command always deploys somewhere.
TARGETS = tuple(t for t in DEPLOY_TARGETS if t != "none")


def _cmd_deploy(args: argparse.Namespace) -> int:
    from imgclf.components.deploy.options import DeployOptions
    from imgclf.components.deploy.step import deploy

    deploy(args.output_dir, deploy=args.target, **DeployOptions.pick(vars(args)))  # prints what it did
    return 0


def add_deploy_parser(sub) -> None:
    from imgclf.components.deploy.options import DeployOptions
    from imgclf.components.lib.options import add_arguments

    p = sub.add_parser("deploy", help=f"serve a published version: {served(TARGETS)}",
                       description="Deploy the registry's champion (or --model-version N). Every value is checked "
                                   "before a file is written or a call is made; credentials come from the "
                                   "environment (kubeconfig or in-cluster, the Google chain), never from flags.")
    p.add_argument("target", choices=TARGETS, help=targets_help(TARGETS))
    add_arguments(p, [o for o in DeployOptions.declared() if o.name != "deploy"])
    p.add_argument("--output-dir", default="build/deploy", help="where manifests are written (default: build/deploy)")
    p.set_defaults(func=_cmd_deploy)
