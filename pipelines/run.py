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
from cpt.steps.classify import ClassifierError  # noqa: E402
from cpt.tokens import TokenShardError  # noqa: E402
from pipelines.common import SlurmError, unfinished_tasks  # noqa: E402


def _add_run_options(p, pipeline: str, example: str, executor_help: str, tasks_help: str) -> None:
    """The options every pipeline sub-command shares."""
    p.add_argument("--config", help=f"YAML settings (default: pipelines/configs/{pipeline}.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "slurm", "ray"],
        default="local",
        help=f"{executor_help}; or ray: tasks on a Ray cluster (datatrove's RayPipelineExecutor; the cluster "
        "RAY_ADDRESS names, else a local one), settings under `ray:` in the config",
    )
    p.add_argument("--tasks", type=int, help=tasks_help)
    p.add_argument(
        "--workers", type=int, help="tasks run at once (default: local: min(tasks, CPUs); slurm: no cap)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (and for slurm the sbatch script) and exit"
    )
    _add_wait(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_wait(p) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --executor slurm: block until the jobs (and the jobs they chain) have ended, then report "
        "as a local run does; exit 1 naming each failed task and its logs",
    )


def _submitted(args, executors, command: str) -> bool:
    """After a Slurm submission: without --wait say how to follow it and return False; with --wait
    block until its jobs have left the queue and return True (the caller then reports as for a local run)."""
    from pipelines.common import slurm_job_ids, wait_for_slurm

    if not args.wait:
        print(f"submitted; {command}")
        return False
    wait_for_slurm(slurm_job_ids(executors))
    return True


def _names(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _check_tasks(tasks: int | None, workers: int | None = None) -> None:
    if tasks is not None and tasks < 1:
        raise ConfigError("--tasks", [f"must be >= 1 (got {tasks})"])
    if workers is not None and workers < 1:
        raise ConfigError("--workers", [f"must be >= 1 (got {workers})"])


def _add_clean(sub) -> None:
    from pipelines.clean import STEPS

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
        "--steps",
        help=f"comma-separated subset of steps to run, in pipeline order ({','.join(STEPS)}); "
        "the writer always runs. `--steps extract` writes the extracted text for inspection",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=-1,
        help="read at most N documents per task, for trial runs (default: no limit)",
    )
    _add_run_options(
        p,
        "clean",
        "langid.min_score=0.5",
        "local processes (default), or a Slurm array job through datatrove's SlurmPipelineExecutor",
        "number of tasks the input files are split into (default: one per file)",
    )


def _clean(args) -> int:
    from pipelines.clean import executor, funnel_of, load_config, prepare
    from pipelines.common import sbatch_script

    cfg = load_config(args.config, args.overrides)
    _check_tasks(args.tasks, args.workers)
    run = prepare(
        args.input,
        args.output,
        cfg,
        _names(args.steps),
        args.tasks,
        args.limit,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    launcher = executor(run, args.executor, args.workers)
    if args.dry_run:
        print(f"clean: {args.input} -> {run.output}  ({run.tasks} tasks, executor {args.executor})")
        for label, step in zip(run.labels, run.pipeline, strict=True):
            print(f"  {label:<32} {step}")
        if args.executor == "slurm":
            print("\n# sbatch script:\n" + sbatch_script(launcher))
        return 0
    launcher.run()
    if args.executor == "slurm" and not _submitted(
        args, [launcher], f"when the array job ends: python pipelines/run.py funnel {run.output}"
    ):
        return 0
    return _print_funnel(funnel_of(run.output), run.output)


def _print_funnel(funnel, output: Path) -> int:
    if funnel.tasks_done == funnel.tasks_total:  # a partial run's stages need not chain up yet
        funnel.check()
    funnel.save(Path(output) / "report" / "funnel.json")
    print(funnel.table())
    print(f"\nshards: {Path(output)}/<lang>/*.parquet   funnel: {Path(output)}/report/funnel.json")
    for warning in funnel.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if funnel.tasks_done < funnel.tasks_total:
        for line in unfinished_tasks(Path(output) / "report" / "logs", funnel.tasks_total):
            print(line, file=sys.stderr)
        print("some tasks did not finish: run the same command again to run only those", file=sys.stderr)
        return 1
    return 0


def _add_dedup(sub) -> None:
    from pipelines.dedup import LEVELS

    p = sub.add_parser(
        "dedup",
        help="URL, MinHash and ccNet line deduplication of clean output, per language",
        description=(
            "Deduplicate the <lang>/ folders of a `clean` output within each language: exact URL "
            "duplicates (the longest text is kept), near-duplicate documents (datatrove's MinHash), "
            "then lines frequent enough to be boilerplate (ccNet). Kept documents go to OUTPUT/<lang>/, "
            "removed ones to the OUTPUT/dedup/removed/ table with what they duplicated; the funnel goes "
            "to OUTPUT/report/funnel.json. Run the same command again to resume."
        ),
    )
    p.add_argument(
        "--input", required=True, help="the --output folder of `clean` (its <lang>/*.parquet shards)"
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--levels", help=f"comma-separated subset of {','.join(LEVELS)}, run in that order")
    _add_run_options(
        p,
        "dedup",
        "lines.max_count=10",
        "local processes (default), or Slurm array jobs chained by dependencies",
        "tasks per language for the per-document stages (default: one per shard)",
    )


def _dedup(args) -> int:
    from pipelines.common import sbatch_script
    from pipelines.dedup import funnel_of, load_config, prepare

    cfg = load_config(args.config, args.overrides)
    _check_tasks(args.tasks, args.workers)
    run = prepare(
        args.input,
        args.output,
        cfg,
        _names(args.levels),
        args.tasks,
        args.executor,
        args.workers,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    if args.dry_run:
        for chain in run.chains:
            print(
                f"{chain.lang}: "
                + " -> ".join(
                    f"{Path(str(e.logging_dir.path)).name}[{e.world_size}]" for e in chain.executors
                )
            )
        if args.executor == "slurm":
            print("\n# first sbatch script:\n" + sbatch_script(run.chains[0].executors[0]))
        return 0
    for chain in run.chains:
        chain.executors[-1].run()  # runs (or submits) its dependencies first
    if args.executor == "slurm" and not _submitted(
        args,
        [e for chain in run.chains for e in chain.executors],
        f"when the jobs end: python pipelines/run.py funnel {run.output}",
    ):
        return 0
    return _print_funnel(funnel_of(run.output), run.output)


def _add_tokenize(sub) -> None:
    p = sub.add_parser(
        "tokenize",
        help="clean/dedup shards -> memory-mapped token shards for the mixer and trainer",
        description=(
            "Tokenize the Parquet shards of a clean or dedup output with a tokenizer folder (from "
            "`cpt-tok merge`), EOS after every document, into datatrove's tokenized format (.ds token ids, "
            ".ds.index document ends). tokens.json, written when every task has finished, records the files, "
            "the counts, the source name and the tokenizer's hash; readers refuse shards without it or made "
            "with another tokenizer. Run the same command again to resume."
        ),
    )
    p.add_argument("--input", required=True, help="a clean or dedup output folder (its Parquet shards)")
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer folder with tokenizer.json (cpt-tok merge output)"
    )
    p.add_argument("--output", required=True, help="token shard folder, e.g. data/tokens/zh_web")
    p.add_argument("--source", help="source name recorded in tokens.json (default: the output folder's name)")
    p.add_argument("--eos", default="</s>", help="end-of-document token (default: </s>)")
    p.add_argument(
        "--split-by",
        metavar="KEY",
        help="one token-shard folder per value of metadata KEY (e.g. topic, from `score`): OUTPUT/<value>/, "
        "selectable in a stage with `where: topic in [...]`",
    )
    _add_run_options(
        p,
        "tokenize",
        "slurm.partition=cpu",
        "local processes (default), or a Slurm array job and a dependent manifest job",
        "tokenizing tasks (default: one per Parquet shard)",
    )


def _tokenize(args) -> int:
    from cpt.tokens import TokenShards
    from pipelines.common import sbatch_script
    from pipelines.tokenization import load_config, prepare

    cfg = load_config(args.config, args.overrides)
    _check_tasks(args.tasks, args.workers)
    run = prepare(
        args.input,
        args.tokenizer,
        args.output,
        source=args.source,
        tasks=args.tasks,
        executor=args.executor,
        workers=args.workers,
        eos_token=args.eos,
        progress=not args.no_progress,
        record=not args.dry_run,
        split_by=args.split_by,
        cfg=cfg,
    )
    if args.dry_run:
        print(f"tokenize: {args.input} -> {run.output}  ({run.tasks} tasks, executor {args.executor})")
        for folder in run.folders:
            print(f"  {folder}")
        if args.executor == "slurm":
            print("\n# first sbatch script:\n" + sbatch_script(run.executors[0]))
        return 0
    run.executors[-1].run()
    if args.executor == "slurm" and not _submitted(
        args, run.executors, f"{run.output}/tokens.json appears when the jobs end"
    ):
        return 0
    failed = unfinished_tasks(run.output / "report" / "logs")
    if failed:
        for line in failed:
            print(line, file=sys.stderr)
        print("some tasks did not finish: run the same command again to run only those", file=sys.stderr)
        return 1
    empty = [
        folder for folder in run.folders if TokenShards(folder, args.tokenizer).manifest["documents"] == 0
    ]
    if empty and len(empty) == len(run.folders):  # every text was blank: a 0-document shard is no success
        raise ConfigError(
            str(args.input), [f"no documents tokenized (every text was empty); {empty[0]} holds none"]
        )
    for folder in run.folders:
        m = TokenShards(folder, args.tokenizer).manifest
        print(
            f"{folder}: {m['documents']:,} documents, {m['tokens']:,} tokens ({m['dtype']}) in {len(m['files'])} "
            f"files; tokenizer sha256 {m['tokenizer_sha256'][:12]}…"
        )
    return 0


def _add_train_classifier(sub) -> None:
    p = sub.add_parser(
        "train-classifier",
        help="train a fastText classifier (quality, code, math, topic) with a held-out evaluation",
        description=(
            "Train a fastText supervised classifier on positive and negative sources (binary: the score is "
            "P(positive)) or on one labelled source (--label-column, multi-class such as topic). Text is "
            "normalised as at scoring time (lower case, words only, Chinese split by jieba). A seeded held-out "
            "split is kept out of training; its precision, recall and F1 are printed and saved beside the "
            "model (MODEL.json, with the training settings)."
        ),
    )
    p.add_argument("--name", required=True, help="quality, code, math or topic (the shard column it fills)")
    p.add_argument("--positive", nargs="+", metavar="PATH", help="Parquet/jsonl/txt files or folders")
    p.add_argument("--negative", nargs="+", metavar="PATH", help="Parquet/jsonl/txt files or folders")
    p.add_argument("--labeled", nargs="+", metavar="PATH", help="sources with a label column (multi-class)")
    p.add_argument("--label-column", help="the column holding the label of --labeled sources")
    p.add_argument("--output", help="model file (default: models/NAME.bin)")
    p.add_argument(
        "--epochs", type=int, default=25, help="passes over the data (default 25: small sets underfit at 10)"
    )
    p.add_argument("--ngrams", type=int, default=2, help="word n-grams (default 2)")
    p.add_argument("--dim", type=int, default=64, help="vector size (default 64)")
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--heldout", type=float, default=0.1, help="share kept out for evaluation (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="fastText threads (1: the same model every run)")


def _train_classifier(args) -> int:
    from cpt.steps.classify import CLASSIFIERS, train_classifier

    if args.name not in CLASSIFIERS:
        raise ConfigError("--name", [f"{args.name!r}: the shard schema holds {', '.join(CLASSIFIERS)}"])
    if args.threads > 1:
        print(
            f"warning: --threads {args.threads}: fastText's threads race over the updates, so each run gives "
            "another model and other scores; --threads 1 gives the same model every run",
            file=sys.stderr,
        )
    result = train_classifier(
        args.output or Path("models") / f"{args.name}.bin",
        args.positive,
        args.negative,
        args.labeled,
        args.label_column,
        args.epochs,
        args.ngrams,
        args.dim,
        args.lr,
        args.heldout,
        args.seed,
        args.threads,
    )
    print(
        f"{result.model}: {result.train_examples:,} training and {result.heldout_examples:,} held-out examples"
    )
    print(f"{'label':<16} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for label, m in result.metrics.items():
        support = f"{m['support']:>8,}" if "support" in m else ""
        print(f"{label:<16} {m['precision']:>9.3f} {m['recall']:>7.3f} {m['f1']:>6.3f} {support}")
    return 0


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="clean/dedup shards -> KL outlier filter -> classifier scores in metadata (drop or route)",
        description=(
            "Score the Parquet shards of a clean or dedup output: drop documents whose word distribution is "
            "far from the corpus's (KL divergence from a reference built from a sample of the input, saved to "
            "OUTPUT/report/kl_reference.json and reused by every task), then run each classifier named: its "
            "score goes into the document's metadata, and per pipelines/configs/score.yaml it drops documents "
            "under its threshold (quality) or routes those over it to OUTPUT/<name>/<lang>/ (code, math). "
            "The funnel counts every drop and route."
        ),
    )
    p.add_argument("--input", required=True, help="a clean or dedup output folder (its Parquet shards)")
    p.add_argument("--output", required=True, help="output folder: <lang>/, <route>/<lang>/ and report/")
    p.add_argument(
        "--classifiers", default="", help="comma-separated: quality,code,math,topic (models/NAME.bin)"
    )
    _add_run_options(p, "score", "kl.threshold=5", "local processes (default) or a Slurm array job",
                     "tasks (default: one per Parquet shard)")  # fmt: skip


def _score(args) -> int:
    from pipelines.score import funnel_of, load_config, prepare

    _check_tasks(args.tasks, args.workers)
    cfg = load_config(args.config, args.overrides)
    run = prepare(
        args.input,
        args.output,
        cfg,
        _names(args.classifiers) or [],
        args.tasks,
        args.executor,
        args.workers,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    if args.dry_run:
        print(f"score {args.input} -> {run.output}: {run.tasks} tasks, steps {', '.join(run.labels)}")
        return 0
    run.executor.run()
    if args.executor == "slurm" and not _submitted(
        args, [run.executor], f"`python pipelines/run.py funnel {run.output}` shows progress"
    ):
        return 0
    return _print_funnel(funnel_of(run.output), run.output)


def _funnel(args) -> int:
    from pipelines import clean, dedup, score
    from pipelines.common import pipeline_of, read_steps

    pipeline = pipeline_of(read_steps(args.output, "clean, dedup or score"))
    funnels = {"clean": clean.funnel_of, "dedup": dedup.funnel_of, "score": score.funnel_of}
    if pipeline not in funnels:
        raise ConfigError(
            args.output, [f"a {pipeline} run has no funnel (its counts are in its tokens.json files)"]
        )
    return _print_funnel(funnels[pipeline](args.output), args.output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipelines/run.py", description="cpt data pipelines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_clean(sub)
    _add_dedup(sub)
    _add_tokenize(sub)
    _add_train_classifier(sub)
    _add_score(sub)
    f = sub.add_parser(
        "funnel", help="print and save the funnel of a clean or dedup run (also while it runs)"
    )
    f.add_argument("output", help="the --output folder of the run")
    args = parser.parse_args(argv)
    try:
        commands = {
            "clean": _clean,
            "dedup": _dedup,
            "tokenize": _tokenize,
            "train-classifier": _train_classifier,
            "score": _score,
            "funnel": _funnel,
        }
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, TokenShardError, ClassifierError, SlurmError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
