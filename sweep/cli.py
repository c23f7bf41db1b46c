"""The ``sweep`` command line: one subcommand per thing a user does with a sweep.

Subcommands that later issues build are listed already, so ``sweep --help`` shows
the whole tool; calling one of them says which issue brings it and exits 2.
"""

from __future__ import annotations

import argparse
import sys

# name -> (one-line help, the issue that builds it)
SUBCOMMANDS = {
    "launch": ("compose the grid with Hydra and run it on Ray: sweep launch experiment=NAME store=PATH", 4),
    "resume": ("relaunch pending, failed and interrupted runs of a store: sweep resume store=PATH", 4),
    "status": ("counts by state, failures and stale runs, from the store alone: sweep status store=PATH", 4),
    "analyze": ("CUSUM calibration, effect sizes and the report: sweep analyze store=PATH out=DIR", 5),
    "run-one": ("train one run from a resolved config into a store (what each Ray task calls)", 3),
    "data": ("download or verify datasets: sweep data download dataset=cifar10 root=DIR", 3),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sweep",
        description="hessian-sweep: layer-wise Hessian trace monitoring across a distributed training sweep.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (text, _) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("overrides", nargs="*", help="key=value overrides")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _, issue = SUBCOMMANDS[args.command]
    print(
        f"sweep {args.command}: not available yet in this version (it is planned in issue {issue}).\n"
        "For now `make demo` runs the layer-wise trace estimator on a small network.",
        file=sys.stderr,
    )
    return 2
