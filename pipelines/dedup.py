"""The `dedup` pipeline: URL, MinHash and ccNet line deduplication of `clean` output, per language.

For each language folder of the input (`en/`, `zh/`, ...) the levels run in order, each reading the
previous one's shards, as chains of datatrove stages (Llama 3's recipe: duplicates are found within a
language):

    url      exact dedup on the normalised URL: signatures -> find duplicates -> filter
    minhash  datatrove's MinHash: signatures -> buckets -> clusters -> filter
    lines    ccNet: count line hashes (sharded on disk) -> frequent lines -> filter

Kept documents go to OUTPUT/<lang>/, removed ones to the OUTPUT/dedup/removed/<lang>/ side table,
intermediate files to OUTPUT/.work/. Every stage is an executor depending on the one before it, locally
or as Slurm array jobs; rerunning the same command skips finished tasks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from cpt.funnel import Funnel, FunnelRow, merge_rows, row_from_stats, step_totals
from cpt.io import write_json, write_text
from pipelines.common import (
    RayConfig,
    SlurmConfig,
    WriteConfig,
    add_run_options,
    check_paths,
    check_settings,
    check_shard_input,
    check_tasks,
    comma_list,
    dedup_stages,
    make_executor,
    print_funnel,
    read_steps,
    recorded_config,
    sbatch_script,
    submitted,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "dedup.yaml"
LEVELS = ("url", "minhash", "lines")
REMOVAL_REASON = {"url": "url_duplicate", "minhash": "near_duplicate", "lines": "lines_emptied"}


@dataclass
class MinhashSettings:
    n_grams: int = 5
    num_buckets: int = 14
    hashes_per_bucket: int = 8
    hash_precision: Literal[32, 64] = 64
    seed: int = 1
    verify_jaccard: float | None = None  # check each candidate pair's real shingle overlap (off in FineWeb)
    char_languages: list[str] = field(default_factory=list)  # these shingle characters, not words


@dataclass
class LinesSettings:
    bucket_size: int = 30_000_000
    max_count: int = 6
    shards: int | Literal["auto"] = "auto"
    spill_every: int = 1_000_000
    shard_input_mb: int = 64  # with shards=auto: one count shard per this many MB of input Parquet


def count_shards(settings: LinesSettings, files: list[Path]) -> int:
    """Count shards: fixed, or grown with the input so each shard's counts stay about the same size."""
    if settings.shards != "auto":
        return settings.shards
    size_mb = sum(f.stat().st_size for f in files) / 2**20
    return max(8, math.ceil(size_mb / settings.shard_input_mb))


@dataclass
class DedupConfig:
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    minhash: MinhashSettings = field(default_factory=MinhashSettings)
    lines: LinesSettings = field(default_factory=LinesSettings)
    write: WriteConfig = field(default_factory=WriteConfig)
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="cpt-dedup"))
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> list[str]:
        problems = [
            f"levels: unknown level {lv!r} (allowed: {', '.join(LEVELS)})"
            for lv in self.levels
            if lv not in LEVELS
        ]
        m, ln = self.minhash, self.lines
        for key, value in [
            ("minhash.n_grams", m.n_grams),
            ("minhash.num_buckets", m.num_buckets),
            ("minhash.hashes_per_bucket", m.hashes_per_bucket),
            ("lines.bucket_size", ln.bucket_size),
            ("lines.max_count", ln.max_count),
            ("lines.shards", ln.shards if ln.shards != "auto" else 1),
            ("lines.spill_every", ln.spill_every),
            ("lines.shard_input_mb", ln.shard_input_mb),
        ]:
            if isinstance(value, int) and value < 1:
                problems.append(f"{key}: must be >= 1 (got {value})")
        if m.verify_jaccard is not None and not 0 < m.verify_jaccard <= 1:
            problems.append(f"minhash.verify_jaccard: must be within (0, 1] or null (got {m.verify_jaccard})")
        return problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DedupConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return build(DedupConfig, apply_overrides(read_yaml(path), overrides or []), str(path))


@dataclass
class LanguageChain:
    """The stages of one language, in order; `funnel` names (row, stage, step index, stage tasks)."""

    lang: str
    executors: list
    funnel: list[tuple[str, str, int, int]]


@dataclass
class DedupRun:
    cfg: DedupConfig
    input: Path  # the input, or the common folder of several
    output: Path
    tasks: dict[str, int]
    chains: list[LanguageChain]

    @property
    def report_dir(self) -> Path:
        return self.output / "report"


def languages_of(input_dir: Path) -> dict[str, list[Path]]:
    """Language folders of a clean output and their shards."""
    if not input_dir.is_dir():
        raise FileNotFoundError(f"{input_dir}: no such folder (expected the --output of `clean`)")
    langs = {
        p.name: sorted(p.glob("*.parquet"))
        for p in sorted(input_dir.iterdir())
        if p.is_dir() and p.name not in ("report", "dedup") and not p.name.startswith(".")
    }
    langs = {k: v for k, v in langs.items() if v}
    if not langs:
        raise FileNotFoundError(f"{input_dir}: no <lang>/*.parquet shards (expected the --output of `clean`)")
    return langs


def _rows(files: list[Path]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def prepare(
    input_dir: str | Path | list,
    output: str | Path,
    cfg: DedupConfig,
    levels: list[str] | None = None,
    tasks: int | None = None,
    executor: str = "local",
    workers: int | None = None,
    record: bool = True,
) -> DedupRun:
    inputs = [Path(i) for i in input_dir] if isinstance(input_dir, list) else [Path(input_dir)]
    output = Path(output)
    if levels:
        unknown = [lv for lv in levels if lv not in LEVELS]
        if unknown:
            raise ConfigError(
                "--levels", [f"unknown level {lv!r} (allowed: {', '.join(LEVELS)})" for lv in unknown]
            )
        cfg = dataclasses.replace(cfg, levels=[lv for lv in LEVELS if lv in levels])
    check_paths(inputs, output)
    # several clean outputs are deduplicated against each other: each language's shards of all of them,
    # read from their common folder (one alone: its language folder, as before)
    langs: dict[str, list[Path]] = {}
    for input_dir in inputs:
        found = languages_of(input_dir)
        check_shard_input(input_dir, [f for lang_files in found.values() for f in lang_files], "dedup")
        for lang, lang_files in found.items():
            langs.setdefault(lang, []).extend(lang_files)
    langs = dict(sorted(langs.items()))
    files = [f for lang_files in langs.values() for f in lang_files]
    root = inputs[0] if len(inputs) == 1 else Path(os.path.commonpath([i.resolve() for i in inputs]))
    task_counts = {lang: tasks or len(files) for lang, files in langs.items()}
    given = str(inputs[0].resolve()) if len(inputs) == 1 else [str(i.resolve()) for i in inputs]
    settings = {"input": given, "config": recorded_config(cfg), "tasks": task_counts}
    check_settings(output / "report", output, settings, record, inputs=files, root=root)
    chains = [
        _language_chain(
            lang,
            inputs[0] / lang if len(inputs) == 1 else root,
            files,
            output,
            cfg,
            task_counts[lang],
            executor,
            workers,
            None if len(inputs) == 1 else sorted(str(f.resolve().relative_to(root.resolve())) for f in files),
            record,
        )
        for lang, files in langs.items()
    ]
    run = DedupRun(cfg=cfg, input=inputs[0] if len(inputs) == 1 else root, output=output, tasks=task_counts,
                   chains=chains)  # fmt: skip
    if record:
        write_json(
            run.report_dir / "steps.json",
            {"pipeline": "dedup", "languages": {c.lang: c.funnel for c in chains}},
        )
    return run


def _language_chain(
    lang: str,
    source: Path,
    files: list[Path],
    output: Path,
    cfg: DedupConfig,
    tasks: int,
    kind: str,
    workers: int | None,
    source_files: list[str] | None = None,
    record: bool = True,
) -> LanguageChain:
    from datatrove.pipeline.dedup import (
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
        MinhashDedupBuckets,
        MinhashDedupCluster,
    )
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    from cpt.shards import row_to_document
    from cpt.steps.dedup import (
        FrequentLines,
        LineDedupFilter,
        LineHashCounter,
        MinhashClusterFilter,
        MinhashSignature,
        MinhashVerifyPairs,
        RemovedWriter,
        longest_text_first,
        url_key,
    )
    from cpt.steps.heuristics import word_tokenizers
    from cpt.steps.read import CountingParquetReader
    from cpt.steps.write import ShardWriter

    work = output / ".work" / lang
    logs = output / "report" / "logs" / lang
    removed = output / "dedup" / "removed"
    executors: list = []
    funnel: list[tuple[str, str, int, int]] = []

    listed = work / "inputs.txt"  # several inputs: the language's shards, relative to their common folder
    if source_files is not None and record:
        write_text(listed, "".join(f + "\n" for f in source_files))

    def reader(folder: Path):
        if source_files is not None and folder == source:
            return CountingParquetReader(
                str(folder),
                paths_file=str(listed),
                adapter=row_to_document,
                doc_progress=False,  # the run's bar of stages instead
            )
        return CountingParquetReader(
            str(folder),
            glob_pattern="*.parquet",
            adapter=row_to_document,
            doc_progress=False,  # the run's bar of stages instead
        )

    def writer(level: str, last: bool):
        folder = output if last else work / f"data_{level}"
        w = cfg.write
        return ShardWriter(
            str(folder),
            source=lang,
            max_file_size=w.max_file_size_mb * 2**20,
            rows_per_group=w.rows_per_group,
            compression=w.compression,
        )

    def stage(name: str, pipeline: list, n_tasks: int) -> str:
        depends = executors[-1] if executors else None
        job = f"{cfg.slurm.job_name}-{lang}-{name}"
        executors.append(
            make_executor(kind, pipeline, n_tasks, logs / name, cfg.slurm, workers, depends, job, cfg.ray)
        )
        return name

    current = source
    for i, level in enumerate(cfg.levels):
        last = i == len(cfg.levels) - 1
        first_stage = {
            "url": "url_1_signatures",
            "minhash": "minhash_1_signatures",
            "lines": "lines_1_counts",
        }
        if i == 0:
            funnel.append(("read", first_stage[level], 0, tasks))
        if level == "url":
            exact = ExactDedupConfig(content_getter=url_key, document_priority=longest_text_first)
            stage(
                "url_1_signatures",
                [reader(current), ExactDedupSignature(str(work / "url_sigs"), exact)],
                tasks,
            )
            stage(
                "url_2_duplicates",
                [ExactFindDedups(str(work / "url_sigs"), str(work / "url_dups"), exact)],
                1,
            )
            step = ExactDedupFilter(
                str(work / "url_dups"), exact, exclusion_writer=RemovedWriter(removed, "url", lang)
            )
            name = stage("url_3_filter", [reader(current), step, writer(level, last)], tasks)
        elif level == "minhash":
            m = cfg.minhash
            mh = MinhashConfig(
                n_grams=m.n_grams,
                num_buckets=m.num_buckets,
                hashes_per_bucket=m.hashes_per_bucket,
                seed=m.seed,
                hash_config=HashConfig(precision=m.hash_precision),
            )
            tokenizer = word_tokenizers([lang])[lang]  # zh: jieba words, unless it shingles characters
            sigs, buckets, clusters = work / "mh_sigs", work / "mh_buckets", work / "mh_clusters"
            # datatrove's signature, plus one for a document shorter than n_grams words (else its exact
            # copies would all be kept)
            chars = lang in m.char_languages
            signature = MinhashSignature(str(sigs), config=mh, language=tokenizer, chars=chars)
            stage("minhash_1_signatures", [reader(current), signature], tasks)
            stage(
                "minhash_2_buckets", [MinhashDedupBuckets(str(sigs), str(buckets), config=mh)], m.num_buckets
            )
            if m.verify_jaccard is not None:
                verified = work / "mh_verified"
                shingler = MinhashSignature(
                    str(work / "mh_unused"), config=mh, language=tokenizer, chars=chars
                )
                check = MinhashVerifyPairs(
                    str(buckets), str(verified), reader(current), shingler, tasks, m.verify_jaccard
                )
                stage("minhash_2b_verify", [check], 1)
                buckets = verified
            cluster = MinhashDedupCluster(str(buckets), str(clusters), config=mh, save_cluster_id=True)
            stage("minhash_3_clusters", [cluster], 1)
            step = MinhashClusterFilter(
                str(clusters), exclusion_writer=RemovedWriter(removed, "minhash", lang)
            )
            name = stage("minhash_4_filter", [reader(current), step, writer(level, last)], tasks)
        else:
            ln = cfg.lines
            n_buckets = max(1, math.ceil(_rows(files) / ln.bucket_size))  # sized on the language's input
            shards = count_shards(ln, files)
            counts, frequent = work / "line_counts", work / "line_frequent"
            counter = LineHashCounter(str(counts), shards, n_buckets, spill_every=ln.spill_every)
            stage("lines_1_counts", [reader(current), counter], tasks)
            stage("lines_2_frequent", [FrequentLines(str(counts), str(frequent), ln.max_count)], shards)
            step = LineDedupFilter(
                str(frequent), n_buckets, exclusion_writer=RemovedWriter(removed, "lines", lang)
            )
            name = stage("lines_3_filter", [reader(current), step, writer(level, last)], tasks)
        funnel.append((level, name, 1, tasks))
        if last:
            funnel.append(("write", name, 2, tasks))
        current = work / f"data_{level}" / lang
    return LanguageChain(lang=lang, executors=executors, funnel=funnel)


def _run_with_bar(chain: LanguageChain) -> None:
    """A language's stages one after the other, under one bar of stages done: a dedup run is a dozen
    short stages, and a bar each (or datatrove's bar per task) would fill the terminal."""
    from tqdm import tqdm

    with tqdm(total=len(chain.executors), desc=f"dedup {chain.lang}", unit="stage", disable=False) as bar:
        for stage in chain.executors:
            bar.set_postfix_str(Path(str(stage.logging_dir.path)).name)
            stage.run()  # a failed task raises here, as it would from the last stage's run
            bar.update()


def funnel_of(output: str | Path) -> Funnel:
    """The funnel of a dedup run, summed over languages, from the stats its tasks saved."""
    report = Path(output) / "report"
    meta = read_steps(output, "dedup")
    rows: dict[str, list[FunnelRow]] = {}
    outputs: dict[str, int] = {}
    languages: dict[str, list[FunnelRow]] = {}
    done = total = 0
    for lang, entries in dedup_stages(meta).items():
        for label, stage_name, step_idx, tasks in entries:
            totals, files = step_totals(report / "logs" / lang / stage_name, step_idx)
            row = row_from_stats(label, totals, reasonless=REMOVAL_REASON.get(label, "filtered"))
            rows.setdefault(label, []).append(row)
            languages.setdefault(lang, []).append(row)
            if label == "write":
                outputs[lang] = row.kept
                done += files
                total += tasks
    order = ["read", *LEVELS, "write"]
    ordered = [merge_rows(label, rows[label]) for label in order if label in rows]
    return Funnel(ordered, done, total, outputs, pipeline="dedup", languages=languages)


def add_arguments(sub) -> None:
    """The `run.py dedup` sub-command and its options."""
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
        "--input",
        required=True,
        nargs="+",
        action="extend",
        help="the --output folder of `clean` (its <lang>/*.parquet shards); several are deduplicated "
        "against each other, language by language",
    )
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--levels", help=f"comma-separated subset of {','.join(LEVELS)}, run in that order")
    add_run_options(
        p,
        "dedup",
        "lines.max_count=10",
        "local processes (default), or Slurm array jobs chained by dependencies",
        "tasks per language for the per-document stages (default: one per shard)",
    )


def command(args) -> int:
    """`run.py dedup`: prepare the run, then run it (or submit it, or print it with --dry-run)."""
    cfg = load_config(args.config, args.overrides)
    check_tasks(args.tasks, args.workers)
    run = prepare(
        args.input,
        args.output,
        cfg,
        comma_list(args.levels),
        args.tasks,
        args.executor,
        args.workers,
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
        if args.executor == "local" and not args.no_progress:
            _run_with_bar(chain)
        else:
            chain.executors[-1].run()  # runs (or submits) its dependencies first
    if args.executor == "slurm" and not submitted(
        args,
        [e for chain in run.chains for e in chain.executors],
        f"when the jobs end: python pipelines/run.py funnel {run.output}",
    ):
        return 0
    return print_funnel(funnel_of(run.output), run.output)
