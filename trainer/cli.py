"""`cpt`: the project-wide commands, `cpt report` and `cpt ablate`.

It sits on the top floor, beside the trainer, because `ablate` drives trainer runs; `report` itself
is library code (`cpt.report`) and only reads files.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from cpt.report import cli as report
    from trainer import ablate

    parser = argparse.ArgumentParser(
        prog="cpt",
        description="Continued pre-training toolkit. Pipelines: `python pipelines/run.py`; tokenizers: "
        "`cpt-tok`; stages: `cpt-mix`; training: `deepspeed trainer/main.py`.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser(
        "report",
        help="a static HTML report of funnels, dedup, mixes, tokenizers, training curves and ablations",
        description=report.__doc__,
    )
    report.add_arguments(r)
    a = sub.add_parser(
        "ablate",
        help="a grid of short CPT runs from one base: forgetting against learning",
        description=ablate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ablate.add_arguments(a)
    args = parser.parse_args(argv)
    return report.run(args) if args.command == "report" else ablate.run(args)


if __name__ == "__main__":
    sys.exit(main())
