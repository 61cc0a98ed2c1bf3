"""`cpt`: the project-wide commands, `cpt report`, `cpt ablate` and `cpt eval`.

It sits on the top floor, beside the trainer, because `ablate` drives trainer runs and `eval` reads
them; `report` itself is library code (`cpt.report`) and only reads files.
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
    from trainer.evaluation import benchmarks as bench

    e = sub.add_parser(
        "eval",
        help="MMLU, CMMLU and C-Eval from local files through lm-evaluation-harness (offline)",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(e)
    args = parser.parse_args(argv)
    commands = {"report": report.run, "ablate": ablate.run, "eval": bench.run}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
