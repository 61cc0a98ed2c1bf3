"""The `score` pipeline (and the scoring steps `clean` can run): clean shards -> KL outlier filter ->
fastText classifiers -> shards with scores in their metadata.

read Parquet -> KLFilter (drops `kl_outlier`) -> one ClassifierScorer per classifier (tag, drop under the
threshold, or route to OUTPUT/<name>/<lang>/) -> ShardWriter. The KL reference is built once, before any
task starts, from a sample of the input (or read from `kl.reference`), and every task reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from pipelines.common import (
    SlurmConfig,
    WriteConfig,
    check_paths,
    check_settings,
    check_shard_input,
    make_executor,
    read_steps,
    write_json,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "score.yaml"


@dataclass
class ClassifierConfig:
    action: Literal["tag", "drop", "route"] = "tag"
    threshold: float = 0.5
    path: str | None = None  # default: <models>/<name>.bin


@dataclass
class KLConfig:
    enabled: bool = True
    reference: str | None = None  # a saved reference; default: built into OUTPUT/report/kl_reference.json
    threshold: float = 4.0  # nats: prose scores 0.5-2, blobs and salad 6-10 (BENCHMARKS.md)
    min_words: int = 20
    sample_docs: int = 5000  # documents per language the reference is built from


@dataclass
class ScoreConfig:
    models: str = "models"
    classifiers: dict[str, ClassifierConfig] = field(default_factory=dict)
    kl: KLConfig = field(default_factory=KLConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="cpt-score"))

    def validate(self) -> list[str]:
        from cpt.steps.classify import CLASSIFIERS

        problems = [
            f"classifiers.{name}: not a classifier the shard schema holds (allowed: {', '.join(CLASSIFIERS)})"
            for name in self.classifiers
            if name not in CLASSIFIERS
        ]
        for name, c in self.classifiers.items():
            if not 0 <= c.threshold <= 1:
                problems.append(f"classifiers.{name}.threshold: within [0, 1] (got {c.threshold})")
        return problems

    def model_path(self, name: str) -> str:
        c = self.classifiers.get(name) or ClassifierConfig()
        return c.path or str(Path(self.models) / f"{name}.bin")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ScoreConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return build(ScoreConfig, apply_overrides(read_yaml(path), overrides or []), str(path))


def scoring_steps(cfg: ScoreConfig, names: list[str], kl_reference: str | None) -> tuple[list, list[str]]:
    """KL filter (when a reference is given) and one scorer per classifier named, with funnel labels."""
    from cpt.steps.classify import ClassifierScorer, KLFilter

    steps, labels = [], []
    if kl_reference:
        steps.append(KLFilter(kl_reference, cfg.kl.threshold, cfg.kl.min_words))
        labels.append("kl")
    # routing classifiers run first, and a routed document is not dropped by a later one: code and
    # math pages are their own data, not low-quality web text
    order = {"route": 0, "drop": 1, "tag": 2}
    for name in sorted(names, key=lambda n: order[(cfg.classifiers.get(n) or ClassifierConfig()).action]):
        c = cfg.classifiers.get(name) or ClassifierConfig()
        path = cfg.model_path(name)
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no {name} classifier (train it with `run.py train-classifier --name {name}`)"
            )
        steps.append(ClassifierScorer(name, str(Path(path).resolve()), c.action, c.threshold))
        labels.append(f"classify.{name}")
    return steps, labels


def sample_for_reference(files: list[Path], per_language: int) -> list[tuple[str, str]]:
    """Up to `per_language` documents of each language, read in file order (the KL reference sample)."""
    import pyarrow.parquet as pq

    from cpt.steps.classify import guess_lang

    taken: dict[str, int] = {}
    sample = []
    for path in files:
        table = pq.read_table(path, columns=[c for c in ("text", "lang") if c in pq.read_schema(path).names])
        langs = table.column("lang").to_pylist() if "lang" in table.column_names else [None] * table.num_rows
        for text, lang in zip(table.column("text").to_pylist(), langs, strict=True):
            lang = lang or guess_lang(text or "")
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
    input_dir: str | Path,
    output: str | Path,
    cfg: ScoreConfig,
    names: list[str],
    tasks: int | None = None,
    executor: str = "local",
    workers: int | None = None,
    progress: bool = True,
    record: bool = True,
) -> ScoreRun:
    from cpt.shards import row_to_document, shard_files
    from cpt.steps.classify import build_kl_reference
    from cpt.steps.read import CountingParquetReader
    from cpt.steps.write import ShardWriter

    input_dir, output = Path(input_dir), Path(output)
    check_paths([input_dir], output)
    files = shard_files(input_dir)
    check_shard_input(input_dir, files, "score")
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
        "input": str(input_dir.resolve()),
        "classifiers": names,
        "config": asdict(cfg),
        "tasks": tasks,
    }
    check_settings(report, output, settings, record, inputs=files, root=input_dir)
    if reference and not Path(reference).is_file() and record:
        build_kl_reference(sample_for_reference(files, cfg.kl.sample_docs), reference)
    steps, labels = scoring_steps(cfg, names, reference)
    paths_file = report / "inputs.txt"
    labels = ["read", *labels, "write"]
    if record:
        paths_file.write_text("".join(str(p.relative_to(input_dir)) + "\n" for p in files), encoding="utf-8")
        write_json(
            report / "steps.json", {"pipeline": "score", "labels": labels, "n_readers": 1, "tasks": tasks}
        )
    reader = CountingParquetReader(
        str(input_dir), paths_file=str(paths_file), adapter=row_to_document, doc_progress=progress
    )
    writer = ShardWriter(
        str(output),
        source="score",
        max_file_size=cfg.write.max_file_size_mb * 2**20,
        rows_per_group=cfg.write.rows_per_group,
        compression=cfg.write.compression,
    )
    run_executor = make_executor(
        executor, [reader, *steps, writer], tasks, report / "logs", cfg.slurm, workers
    )
    return ScoreRun(run_executor, output, labels, tasks, reference)


def funnel_of(output: str | Path):
    from cpt.funnel import build_funnel

    meta = read_steps(output, "score")
    logs = Path(output) / "report" / "logs"
    return build_funnel(logs, meta["labels"], meta["tasks"], meta["n_readers"], pipeline="score")
