"""The `clean` pipeline: WARC / WET / jsonl / parquet -> language-routed, filtered Parquet shards.

    read -> url_filter -> extract -> langid -> heuristics (Gopher repetition, Gopher quality, C4,
    FineWeb) -> dirty_words -> pii -> write OUTPUT/<lang>/*.parquet

Each step is a datatrove step; this module only configures them and hands them to an executor.
Run state lives in OUTPUT/report/: the resolved settings, the input lists, datatrove's logs,
completions and stats, and the funnel. Re-running the same command resumes: finished tasks are
skipped, unfinished ones start over and overwrite their own `.tmp` shards.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from cpt.funnel import Funnel, build_funnel, loss_warning
from cpt.io import write_json
from cpt.steps.classify import ScoreConfig, scoring_steps
from pipelines.common import (
    RayConfig,
    SlurmConfig,
    WriteConfig,
    add_run_options,
    check_paths,
    check_settings,
    check_tasks,
    comma_list,
    make_executor,
    print_funnel,
    read_steps,
    recorded_config,
    sbatch_script,
    submitted,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "clean.yaml"
STEPS = ("url_filter", "extract", "langid", "heuristics", "dirty_words", "pii", "kl", "classify")
DEFAULT_STEPS = STEPS[:6]  # kl and classify need a KL reference and trained classifiers (`score` section)


@dataclass
class UrlFilterConfig:
    block_list: str | None = None
    soft_word_threshold: int = 2


@dataclass
class ExtractConfig:
    backend: Literal["trafilatura", "resiliparse"] = "trafilatura"
    max_chars: int = 5_000_000  # longer pages are dropped as too_large, before any work
    cpu_timeout: float = 30.0  # CPU seconds one page may use in the extractor, not wall-clock seconds
    stall_timeout: float = 120.0  # safety net: an extractor that uses no CPU this long hangs
    retries: int = 1  # a page that times out, stalls or crashes the extractor gets one more try
    favour_precision: bool = True
    include_tables: bool = False
    # a page the extraction above empties is extracted again without trafilatura's `deduplicate` and with
    # tables, and kept when that gives text (counted as extract_fallback)
    fallback: bool = True


@dataclass
class ReadConfig:
    # plain text files (.txt, .txt.gz, .utf8): `lines`, one document a line (Wudao, THUCNews and most
    # Chinese corpora), or `blocks`, a document a run of lines ended by a blank line
    txt: Literal["lines", "blocks"] = "lines"


@dataclass
class LangIdConfig:
    min_score: float = 0.65


@dataclass
class DirtyWordsConfig:
    max_share: float = 0.01
    lists: dict[str, str] = field(default_factory=dict)


@dataclass
class PiiConfig:
    emails: bool = True
    ips: bool = True
    public_ips_only: bool = True
    phones: bool = True


@dataclass
class CleanConfig:
    source: str | None = None
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])
    steps: list[str] = field(default_factory=lambda: list(DEFAULT_STEPS))
    url_filter: UrlFilterConfig = field(default_factory=UrlFilterConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    heuristics: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirty_words: DirtyWordsConfig = field(default_factory=DirtyWordsConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)  # the kl and classify steps, as `run.py score`
    write: WriteConfig = field(default_factory=WriteConfig)
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="cpt-clean"))
    ray: RayConfig = field(default_factory=RayConfig)

    def validate(self) -> list[str]:
        from cpt.steps.heuristics import HEURISTIC_FILTERS, filter_params

        problems = [
            f"steps: unknown step {s!r} (allowed: {', '.join(STEPS)})" for s in self.steps if s not in STEPS
        ]
        if not self.languages:
            problems.append("languages: keep at least one language")
        if "kl" in self.steps and not self.score.kl.reference:
            problems.append(
                "score.kl.reference: the kl step needs a saved reference (`run.py score` writes one)"
            )
        if "classify" in self.steps and not self.score.classifiers:
            problems.append("score.classifiers: the classify step needs at least one classifier")
        problems += [f"score.{p}" for p in self.score.validate()]
        for name, spec in self.heuristics.items():
            if name not in HEURISTIC_FILTERS:
                problems.append(
                    f"heuristics.{name}: unknown filter (allowed: {', '.join(HEURISTIC_FILTERS)})"
                )
                continue
            if not isinstance(spec, dict):
                problems.append(f"heuristics.{name}: expected a mapping, got {spec!r}")
                continue
            allowed = filter_params(HEURISTIC_FILTERS[name])
            for key, params in spec.items():
                if key == "enabled":
                    if not isinstance(params, bool):
                        problems.append(f"heuristics.{name}.enabled: expected true or false, got {params!r}")
                    continue
                if not isinstance(params, dict):
                    problems.append(f"heuristics.{name}.{key}: expected a mapping of filter settings")
                    continue
                for param in sorted(set(params) - allowed):
                    problems.append(
                        f"heuristics.{name}.{key}.{param}: not a setting of {HEURISTIC_FILTERS[name].__name__} "
                        f"(allowed: {', '.join(sorted(allowed))})"
                    )
        for key, value, low, high in [
            ("langid.min_score", self.langid.min_score, 0, 1),
            ("dirty_words.max_share", self.dirty_words.max_share, 0, 1),
            ("write.max_file_size_mb", self.write.max_file_size_mb, 1, None),
            ("write.rows_per_group", self.write.rows_per_group, 1, None),
            ("extract.max_chars", self.extract.max_chars, 1, None),
            ("extract.cpu_timeout", self.extract.cpu_timeout, 0.1, None),
            ("extract.stall_timeout", self.extract.stall_timeout, 1, None),
            ("extract.retries", self.extract.retries, 0, 5),
        ]:
            if not isinstance(value, (int, float)):
                continue  # a value of the wrong type is reported by the loader
            if value < low or (high is not None and value > high):
                bounds = f"within [{low}, {high}]" if high is not None else f">= {low}"
                problems.append(f"{key}: must be {bounds} (got {value})")
        return problems


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> CleanConfig:
    """Read the YAML config (default: pipelines/configs/clean.yaml), apply overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    data = apply_overrides(read_yaml(path), overrides or [])
    cfg = build(CleanConfig, data, str(path))
    base = path.resolve().parent  # relative paths in a config are relative to the config file
    if cfg.url_filter.block_list:
        cfg.url_filter.block_list = str((base / cfg.url_filter.block_list).resolve())
    cfg.dirty_words.lists = {k: str((base / v).resolve()) for k, v in cfg.dirty_words.lists.items()}
    missing = [
        f"{key}: {p} does not exist"
        for key, p in [("url_filter.block_list", cfg.url_filter.block_list)]
        + [(f"dirty_words.lists.{k}", v) for k, v in cfg.dirty_words.lists.items()]
        if p and not Path(p).is_file()
    ]
    if missing:
        raise ConfigError(str(path), missing)
    return cfg


def heuristic_filters(cfg: CleanConfig) -> list[tuple[str, object]]:
    """The heuristics step's filters, in order, each with its funnel label (`heuristics.<kind>`)."""
    from cpt.steps.heuristics import HEURISTIC_FILTERS, PerLanguageFilter, word_tokenizers

    tokenizers = word_tokenizers(cfg.languages)  # shared: a page split once serves the next filter
    filters = []
    for kind in HEURISTIC_FILTERS:
        spec = dict(cfg.heuristics.get(kind, {}))
        if spec.pop("enabled", True):
            step = PerLanguageFilter(f"{kind} (per language)", kind, spec, cfg.languages, tokenizers)
            filters.append((f"heuristics.{kind}", step))
    return filters


def build_steps(cfg: CleanConfig, output: Path) -> tuple[list, list[str]]:
    """The processing steps after the readers, and a funnel label for each."""
    from cpt.steps.dirty_words import DirtyWordsFilter, default_lists
    from cpt.steps.extract import make_extractor
    from cpt.steps.langid import LanguageID
    from cpt.steps.pii import PIIRedactor
    from cpt.steps.url_filter import OfflineURLFilter
    from cpt.steps.write import ShardWriter

    steps, labels = [], []
    for name in cfg.steps:
        if name == "url_filter":
            steps.append(OfflineURLFilter(cfg.url_filter.block_list, cfg.url_filter.soft_word_threshold))
        elif name == "extract":
            e = cfg.extract
            steps.append(
                make_extractor(
                    e.backend,
                    e.favour_precision,
                    e.include_tables,
                    e.max_chars,
                    e.cpu_timeout,
                    e.stall_timeout,
                    e.retries,
                    e.fallback,
                )
            )
        elif name == "langid":
            steps.append(LanguageID(cfg.languages, cfg.langid.min_score))
        elif name == "heuristics":
            for label, step in heuristic_filters(cfg):
                steps.append(step)
                labels.append(label)
            continue
        elif name == "dirty_words":
            steps.append(
                DirtyWordsFilter({**default_lists(), **cfg.dirty_words.lists}, cfg.dirty_words.max_share)
            )
        elif name == "pii":
            p = cfg.pii
            steps.append(PIIRedactor(p.emails, p.ips, p.public_ips_only, p.phones))
        elif name in ("kl", "classify"):
            scorers, score_labels = scoring_steps(
                cfg.score,
                list(cfg.score.classifiers) if name == "classify" else [],
                cfg.score.kl.reference if name == "kl" else None,
            )
            steps += scorers
            labels += score_labels
            continue
        labels.append(name)
    steps.append(
        ShardWriter(
            str(output),
            source=cfg.source,  # None: each document's own, else its input file's stem
            max_file_size=cfg.write.max_file_size_mb * 2**20,
            rows_per_group=cfg.write.rows_per_group,
            compression=cfg.write.compression,
        )
    )
    labels.append("write")
    return steps, labels


@dataclass
class CleanRun:
    """Everything a launch needs: resolved settings, the datatrove pipeline and where its state lives."""

    cfg: CleanConfig
    input: str | list[str]
    output: Path
    pipeline: list
    labels: list[str]
    n_readers: int
    tasks: int
    root: str = ""  # the input folder, absolute: the funnel names input files relative to it
    progress: bool = True  # a bar of tasks done (one task: its reader's bar of documents)

    @property
    def report_dir(self) -> Path:
        return self.output / "report"

    @property
    def logging_dir(self) -> Path:
        return self.report_dir / "logs"


def prepare(
    input_path: str | list[str],
    output: str | Path,
    cfg: CleanConfig,
    steps: list[str] | None = None,
    tasks: int | None = None,
    limit: int = -1,
    progress: bool = True,
    record: bool = True,
) -> CleanRun:
    """Resolve settings, list the inputs and assemble the pipeline; refuse to mix two runs' outputs.

    With `record=False` (a dry run) the settings are checked against an earlier run but not saved.
    """
    from cpt.steps.read import list_inputs, make_readers, write_input_lists

    output = Path(output)
    inputs = [input_path] if isinstance(input_path, str) else list(input_path)
    input_path = inputs[0] if len(inputs) == 1 else inputs
    check_paths(inputs, output)
    if steps:
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ConfigError(
                "--steps", [f"unknown step {s!r} (allowed: {', '.join(STEPS)})" for s in unknown]
            )
        cfg = dataclasses.replace(cfg, steps=[s for s in STEPS if s in steps])
    report = output / "report"
    folder, by_kind = list_inputs(inputs[0]) if len(inputs) == 1 else _list_several(inputs)
    files = [Path(folder) / f for kind_files in by_kind.values() for f in kind_files]
    tasks = tasks or len(files)
    readers = make_readers(
        folder,
        by_kind,
        report / "inputs",
        limit,
        progress and tasks == 1,
        cfg.extract.max_chars,
        cfg.read.txt,
    )
    processing, labels = build_steps(cfg, output)
    run = CleanRun(
        cfg=cfg,
        input=input_path,
        output=output,
        pipeline=[*readers, *processing],
        labels=[f"read.{i}" for i in range(len(readers))] + labels,
        n_readers=len(readers),
        tasks=tasks,
        root=os.path.abspath(folder),
        progress=progress,
    )
    _check_settings(run, limit, record, files, Path(folder))
    if record:  # the input lists the tasks shard, written only once the run is accepted
        write_input_lists(by_kind, report / "inputs")
    return run


def _list_several(inputs: list[str]) -> tuple[str, dict[str, list[str]]]:
    """`list_inputs` of several folders or globs as one: their common folder, and every file relative to
    it (a file two of them name is read once)."""
    from cpt.steps.read import list_inputs

    listed = [list_inputs(i) for i in inputs]
    try:
        root = os.path.commonpath([os.path.abspath(folder) for folder, _ in listed])
    except ValueError:  # different drives, or local and remote paths
        raise ConfigError("--input", ["several inputs must be local folders or globs"]) from None
    by_kind: dict[str, set[str]] = {}
    for folder, kinds in listed:
        for kind, files in kinds.items():
            by_kind.setdefault(kind, set()).update(
                os.path.relpath(os.path.join(os.path.abspath(folder), f), root) for f in files
            )
    return root, {kind: sorted(files) for kind, files in sorted(by_kind.items())}


def _recorded_input(given: str) -> str:
    return str(Path(given).resolve()) if "*" not in given else given


def _check_settings(run: CleanRun, limit: int, record: bool, files: list[Path], root: Path) -> None:
    settings = {
        "input": _recorded_input(run.input)
        if isinstance(run.input, str)
        else [_recorded_input(i) for i in run.input],
        "config": recorded_config(run.cfg),
        "tasks": run.tasks,
        "limit": limit,
        "steps": run.labels,
    }
    check_settings(run.report_dir, run.output, settings, record, inputs=files, root=root)
    if record:
        write_json(
            run.report_dir / "steps.json",
            {"pipeline": "clean", "labels": run.labels, "n_readers": run.n_readers, "tasks": run.tasks},
        )


def executor(run: CleanRun, kind: str = "local", workers: int | None = None):
    from cpt.funnel import with_tallies

    # every step's documents counted by language and input file too: the funnel's breakdown
    pipeline = with_tallies(run.pipeline, run.n_readers, run.root)
    return make_executor(
        kind, pipeline, run.tasks, run.logging_dir, run.cfg.slurm, workers, ray=run.cfg.ray,
        progress=run.progress, desc="clean",
    )  # fmt: skip


def funnel_of(output: str | Path) -> Funnel:
    """The funnel of a (possibly still running or interrupted) clean run, from its saved stats."""
    meta = read_steps(output, "clean")
    logs = Path(output) / "report" / "logs"
    funnel = build_funnel(logs, meta["labels"], meta["tasks"], meta["n_readers"], pipeline="clean")
    read = next((row for row in funnel.rows if row.step == "read"), None)
    unread = {
        k: read.removed[k]
        for k in ("not_warc", "broken_parquet", "no_text_column")
        if read and read.removed.get(k)
    }
    if unread:  # whole files the readers could not use: a wrong --input or a damaged copy, worth a look
        what = {"not_warc": "files that are not WARCs", "broken_parquet": "unreadable Parquet files",
                "no_text_column": "rows in Parquet files without a text column"}  # fmt: skip
        funnel.warnings.append(
            "input not read: "
            + ", ".join(f"{what[k]} ({k}): {n:,}" for k, n in unread.items())
            + f"; the task logs in {logs}/logs name the files"
        )
    extract = next((row for row in funnel.rows if row.step == "extract"), None)
    if extract is not None:
        settings = Path(output) / "report" / "settings.json"
        limits = (
            json.loads(settings.read_text(encoding="utf-8"))["config"]["extract"]
            if settings.is_file()
            else {}
        )

        def setting(key: str) -> str:
            return f"extract.{key} (now {limits[key]:g})" if key in limits else f"extract.{key}"

        governs = {
            "timeout": setting("cpu_timeout"),
            "stalled": setting("stall_timeout"),
            "extractor_crashed": "the memory of each task",
        }
        warning = loss_warning(extract, governs, what="pages")
        if warning:
            funnel.warnings.append(warning)
    return funnel


def add_arguments(sub) -> None:
    """The `run.py clean` sub-command and its options."""
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
        nargs="+",
        action="extend",
        help="folders (searched recursively) or globs of input files, one or several; "
        "kinds by name: .warc(.gz), .wet(.gz), .jsonl(.gz|.zst), .parquet, .txt (one document a line; "
        "--set read.txt=blocks: blank-line-separated blocks)",
    )
    p.add_argument("--output", required=True, help="output folder: <lang>/*.parquet shards and report/")
    p.add_argument(
        "--source",
        help="the `source` column of every row (default: a record's own `source` field, else the stem of "
        "its input file: news.jsonl -> news)",
    )
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
    add_run_options(
        p,
        "clean",
        "langid.min_score=0.5",
        "local processes (default), or a Slurm array job through datatrove's SlurmPipelineExecutor",
        "number of tasks the input files are split into (default: one per file)",
    )


def command(args) -> int:
    """`run.py clean`: prepare the run, then run it (or submit it, or print it with --dry-run)."""
    cfg = load_config(args.config, args.overrides)
    if args.source:
        cfg = dataclasses.replace(cfg, source=args.source)
    check_tasks(args.tasks, args.workers)
    run = prepare(
        args.input,
        args.output,
        cfg,
        comma_list(args.steps),
        args.tasks,
        args.limit,
        progress=not args.no_progress,
        record=not args.dry_run,
    )
    launcher = executor(run, args.executor, args.workers)
    if args.dry_run:
        print(f"clean: {' '.join(args.input)} -> {run.output}  ({run.tasks} tasks, executor {args.executor})")
        for label, step in zip(run.labels, run.pipeline, strict=True):
            print(f"  {label:<32} {step}")
        if args.executor == "slurm":
            print("\n# sbatch script:\n" + sbatch_script(launcher))
        return 0
    launcher.run()
    if args.executor == "slurm" and not submitted(
        args, [launcher], f"when the array job ends: python pipelines/run.py funnel {run.output}"
    ):
        return 0
    return print_funnel(funnel_of(run.output), run.output)
