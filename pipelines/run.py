"""cpt's pipeline command line: one sub-command per pipeline.

python pipelines/run.py clean --input warc/ --output data/clean
python pipelines/run.py funnel data/clean
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpt.config import ConfigError  # noqa: E402


def _add_clean(sub) -> None:
    from pipelines.clean import DEFAULT_CONFIG, STEPS

    p = sub.add_parser(
        "clean",
        help="WARC/WET/jsonl/parquet -> extracted, filtered, language-routed Parquet shards",
        description=(
            "Extract main text from web pages, filter it (URL block-list, language ID, Gopher/C4/FineWeb "
            "heuristics, dirty words), redact PII and write Parquet shards to OUTPUT/<lang>/. "
            "The funnel (documents in, kept and removed per reason at every step) is printed and saved "
            "to OUTPUT/report/funnel.json. Interrupt it at any point and run the same command again: "
            "it finishes the remaining work."
        ),
    )
    p.add_argument(
        "--input",
        required=True,
        help="folder (searched recursively) or glob of input files; "
        "kinds by name: .warc(.gz), .wet(.gz), .jsonl(.gz|.zst), .parquet",
    )
    p.add_argument("--output", required=True, help="output folder: <lang>/*.parquet shards and report/")
    p.add_argument(
        "--config", help=f"YAML settings (default: {DEFAULT_CONFIG.parent.parent.name}/configs/clean.yaml)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set langid.min_score=0.5 (repeatable)",
    )
    p.add_argument(
        "--steps",
        help=f"comma-separated subset of steps to run, in pipeline order ({','.join(STEPS)}); "
        "the writer always runs. `--steps extract` writes the extracted text for inspection",
    )
    p.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="local processes (default), or a Slurm array job through datatrove's SlurmPipelineExecutor",
    )
    p.add_argument(
        "--tasks", type=int, help="number of tasks the input files are split into (default: one per file)"
    )
    p.add_argument(
        "--workers", type=int, help="tasks run at once (default: local: min(tasks, CPUs); slurm: no cap)"
    )
    p.add_argument(
        "--limit",
        type=int,
        default=-1,
        help="read at most N documents per task, for trial runs (default: no limit)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (and for slurm the sbatch script) and exit"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _clean(args) -> int:
    from pipelines.clean import funnel_of, load_config, local_executor, prepare, sbatch_script, slurm_executor

    cfg = load_config(args.config, args.overrides)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()] if args.steps else None
    if args.tasks is not None and args.tasks < 1:
        raise ConfigError("--tasks", [f"must be >= 1 (got {args.tasks})"])
    run = prepare(
        args.input,
        args.output,
        cfg,
        steps,
        args.tasks,
        args.limit,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    executor = (
        slurm_executor(run, args.workers) if args.executor == "slurm" else local_executor(run, args.workers)
    )
    if args.dry_run:
        print(f"clean: {args.input} -> {run.output}  ({run.tasks} tasks, executor {args.executor})")
        for label, step in zip(run.labels, run.pipeline, strict=True):
            print(f"  {label:<32} {step}")
        if args.executor == "slurm":
            print("\n# sbatch script:\n" + sbatch_script(executor))
        return 0
    executor.run()
    if args.executor == "slurm":
        print(f"submitted; when the array job ends: python pipelines/run.py funnel {run.output}")
        return 0
    return _print_funnel(funnel_of(run.output), run.output)


def _print_funnel(funnel, output: Path) -> int:
    funnel.check()
    funnel.save(Path(output) / "report" / "funnel.json")
    print(funnel.table())
    print(f"\nshards: {Path(output)}/<lang>/*.parquet   funnel: {Path(output)}/report/funnel.json")
    if funnel.tasks_done < funnel.tasks_total:
        print("some tasks did not finish: run the same command again to complete them", file=sys.stderr)
        return 1
    return 0


def _funnel(args) -> int:
    from pipelines.clean import funnel_of

    return _print_funnel(funnel_of(args.output), args.output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines/run.py", description="cpt data pipelines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_clean(sub)
    f = sub.add_parser(
        "funnel", help="print and save the funnel of a clean run (also while it runs on Slurm)"
    )
    f.add_argument("output", help="the --output folder of the run")
    args = parser.parse_args(argv)
    try:
        return {"clean": _clean, "funnel": _funnel}[args.command](args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
