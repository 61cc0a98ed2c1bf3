"""cpt's pipeline command line: one sub-command per pipeline, dispatched to the pipeline's module.

python pipelines/run.py clean --input warc/ --output data/clean
python pipelines/run.py funnel data/clean

Each pipeline module (clean.py, dedup.py, tokenization.py, score.py) owns its sub-command: its
`add_arguments(sub)` adds the parser (the options every pipeline shares come from
`pipelines.common.add_run_options`) and its `command(args)` runs it. This file only lists them, and turns
the errors a user can cause into one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
if "--verbose" not in sys.argv[1:]:
    # quiet by default: datatrove logs every step of every task at INFO (hundreds of lines a run); the
    # terminal shows warnings and errors, the task logs under OUTPUT/report/logs keep everything. Set
    # before loguru is imported, which reads it once, here and in the worker processes that inherit it
    os.environ.setdefault("LOGURU_LEVEL", "WARNING")
    # and datatrove's inner bars (dedup's "Reading dup files", the token merger's) off: tqdm reads
    # TQDM_* defaults once, on import. A bar that passes `disable` itself (cpt's bar of tasks, a
    # reader's document bar) is not affected
    os.environ.setdefault("TQDM_DISABLE", "1")

from cpt.config import ConfigError  # noqa: E402
from cpt.io import OutputError, exit_on_disk_fault, output_lock  # noqa: E402
from cpt.steps.classify import ClassifierError  # noqa: E402
from cpt.tokens import TokenShardError  # noqa: E402
from pipelines import clean, dedup, score, tokenization  # noqa: E402
from pipelines.common import (  # noqa: E402
    SlurmError,
    check_paths,
    check_slurm_jobs_ended,
    pipeline_of,
    print_funnel,
    read_steps,
)

# sub-command -> (adds its parser, runs it), in the order --help lists them
COMMANDS = {
    "clean": (clean.add_arguments, clean.command),
    "dedup": (dedup.add_arguments, dedup.command),
    "tokenize": (tokenization.add_arguments, tokenization.command),
    "train-classifier": (score.add_classifier_arguments, score.classifier_command),
    "score": (score.add_arguments, score.command),
}


def _funnel(args) -> int:
    pipeline = pipeline_of(read_steps(args.output, "clean, dedup or score"))
    funnels = {"clean": clean.funnel_of, "dedup": dedup.funnel_of, "score": score.funnel_of}
    if pipeline not in funnels:
        raise ConfigError(
            args.output, [f"a {pipeline} run has no funnel (its counts are in its tokens.json files)"]
        )
    return print_funnel(funnels[pipeline](args.output), args.output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines/run.py", description="cpt data pipelines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_arguments, _ in COMMANDS.values():
        add_arguments(sub)
    f = sub.add_parser(
        "funnel", help="print and save the funnel of a clean or dedup run (also while it runs)"
    )
    f.add_argument("output", help="the --output folder of the run")
    args = parser.parse_args(argv)
    try:
        if args.command == "funnel":
            return _funnel(args)
        output = getattr(args, "output", None)
        if output is None or getattr(args, "dry_run", False) or args.command == "train-classifier":
            # train-classifier's --output is a model file, written whole under a temporary name
            return COMMANDS[args.command][1](args)
        if args.command in ("clean", "dedup", "score", "tokenize"):
            # before the lock file is made in --output: an --output inside the input is refused untouched
            check_paths(args.input if isinstance(args.input, list) else [args.input], output)
        with output_lock(output, f"pipelines/run.py {args.command}"):  # one writer per output folder
            check_slurm_jobs_ended(output)  # and none left by a submission that did not --wait
            return COMMANDS[args.command][1](args)
    except (ConfigError, FileNotFoundError, TokenShardError, ClassifierError, SlurmError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output's disk full or read-only: one line, not a traceback
        return exit_on_disk_fault(e, where=getattr(args, "output", None))


if __name__ == "__main__":
    sys.exit(main())
