"""The `score` pipeline (and the scoring steps `clean` can run): clean shards -> KL outlier filter ->
fastText classifiers -> shards with scores in their metadata.

read Parquet -> KLFilter (drops `kl_outlier`) -> one ClassifierScorer per classifier (tag, drop under the
threshold, or route to OUTPUT/<name>/<lang>/) -> ShardWriter. The KL reference is built once, before any
task starts, from a sample of the input (or read from `kl.reference`), and every task reuses it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from cpt.io import write_json, write_text
from cpt.shards import read_rows
from cpt.steps.classify import ScoreConfig, guess_lang, scoring_steps
from pipelines.common import (
    RayConfig,
    SlurmConfig,
    WriteConfig,
    add_run_options,
    add_shard_input,
    check_settings,
    check_tasks,
    comma_list,
    make_executor,
    print_funnel,
    read_steps,
    recorded_config,
    shard_inputs,
    submitted,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "score.yaml"


@dataclass
class ScorePipelineConfig(ScoreConfig):
    """The scoring settings `clean` shares (cpt.steps.classify.ScoreConfig), plus the score pipeline's
    own writer and Slurm settings."""

    write: WriteConfig = field(default_factory=WriteConfig)
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="cpt-score"))
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ScorePipelineConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return build(ScorePipelineConfig, apply_overrides(read_yaml(path), overrides or []), str(path))


def sample_for_reference(files: list[Path], per_language: int) -> list[tuple[str, str]]:
    """Up to `per_language` documents of each language, read in file order (the KL reference sample)."""
    taken: dict[str, int] = {}
    sample = []
    for path in files:
        for row in read_rows(path, ("text",), optional=("lang",)):
            text = row["text"]
            lang = row["lang"] or guess_lang(text or "")
            if text and taken.get(lang, 0) < per_language:
                taken[lang] = taken.get(lang, 0) + 1
                sample.append((text, lang))
    return sample


@dataclass
class ScoreRun:
    executor: object
    output: Path
    labels: list[str]
    tasks: int
    kl_reference: str | None


def prepare(
    input_dir: str | Path | list,
    output: str | Path,
    cfg: ScoreConfig,
    names: list[str],
    tasks: int | None = None,
    executor: str = "local",
    workers: int | None = None,
    progress: bool = True,
    record: bool = True,
) -> ScoreRun:
    from cpt.shards import row_to_document
    from cpt.steps.classify import build_kl_reference
    from cpt.steps.read import CountingParquetReader
    from cpt.steps.write import ShardWriter

    output = Path(output)
    input_dir, files, given = shard_inputs(input_dir, output, "score")
    if not names and not cfg.kl.enabled:
        raise ConfigError("--classifiers", ["name at least one classifier, or enable kl"])
    tasks = tasks or len(files)
    report = output / "report"
    reference = None
    if cfg.kl.enabled:
        reference = cfg.kl.reference or str(report / "kl_reference.json")
        if cfg.kl.reference and not Path(reference).is_file():
            raise FileNotFoundError(f"{reference}: no KL reference (kl.reference)")
    for name in names:  # a missing classifier model fails before anything is written
        if not Path(cfg.model_path(name)).is_file():
            raise FileNotFoundError(
                f"{cfg.model_path(name)}: no {name} classifier (train it with `run.py train-classifier --name {name}`)"
            )
    settings = {
        "input": given,
        "classifiers": names,
        "config": recorded_config(cfg),
        "tasks": tasks,
    }
    check_settings(report, output, settings, record, inputs=files, root=input_dir)
    if reference and not Path(reference).is_file() and record:
        build_kl_reference(sample_for_reference(files, cfg.kl.sample_docs), reference)
    steps, labels = scoring_steps(cfg, names, reference)
    paths_file = report / "inputs.txt"
    labels = ["read", *labels, "write"]
    if record:
        write_text(paths_file, "".join(str(p.relative_to(input_dir)) + "\n" for p in files))
        write_json(
            report / "steps.json", {"pipeline": "score", "labels": labels, "n_readers": 1, "tasks": tasks}
        )
    reader = CountingParquetReader(
        str(input_dir),
        paths_file=str(paths_file),
        adapter=row_to_document,
        doc_progress=progress and tasks == 1,
    )
    writer = ShardWriter(
        str(output),
        source="score",
        max_file_size=cfg.write.max_file_size_mb * 2**20,
        rows_per_group=cfg.write.rows_per_group,
        compression=cfg.write.compression,
    )
    run_executor = make_executor(
        executor, [reader, *steps, writer], tasks, report / "logs", cfg.slurm, workers, ray=cfg.ray,
        progress=progress, desc="score",
    )  # fmt: skip
    return ScoreRun(run_executor, output, labels, tasks, reference)


def funnel_of(output: str | Path):
    from cpt.funnel import build_funnel

    meta = read_steps(output, "score")
    logs = Path(output) / "report" / "logs"
    return build_funnel(logs, meta["labels"], meta["tasks"], meta["n_readers"], pipeline="score")


def add_arguments(sub) -> None:
    """The `run.py score` sub-command and its options."""
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
    add_shard_input(p)
    p.add_argument("--output", required=True, help="output folder: <lang>/, <route>/<lang>/ and report/")
    p.add_argument(
        "--classifiers", default="", help="comma-separated: quality,code,math,topic (models/NAME.bin)"
    )
    add_run_options(p, "score", "kl.threshold=5", "local processes (default) or a Slurm array job",
                     "tasks (default: one per Parquet shard)")  # fmt: skip


def command(args) -> int:
    """`run.py score`: prepare the run, then run it (or submit it, or print it with --dry-run)."""
    check_tasks(args.tasks, args.workers)
    cfg = load_config(args.config, args.overrides)
    run = prepare(
        args.input,
        args.output,
        cfg,
        comma_list(args.classifiers) or [],
        args.tasks,
        args.executor,
        args.workers,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    if args.dry_run:
        print(
            f"score {' '.join(args.input)} -> {run.output}: {run.tasks} tasks, steps {', '.join(run.labels)}"
        )
        return 0
    run.executor.run()
    if args.executor == "slurm" and not submitted(
        args, [run.executor], f"`python pipelines/run.py funnel {run.output}` shows progress"
    ):
        return 0
    return print_funnel(funnel_of(run.output), run.output)


def add_classifier_arguments(sub) -> None:
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


def classifier_command(args) -> int:
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
