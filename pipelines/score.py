"""The `score` pipeline (and the scoring steps `clean` can run): clean shards -> KL outlier filter ->
fastText classifiers -> shards with scores in their metadata.

read Parquet -> KLFilter (drops `kl_outlier`) -> one ClassifierScorer per classifier (tag, drop under the
threshold, or route to OUTPUT/<name>/<lang>/) -> ShardWriter. The KL reference is built once, before any
task starts, from a sample of the input (or read from `kl.reference`), and every task reuses it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from cpt.io import write_json
from cpt.shards import read_rows
from cpt.steps.classify import ScoreConfig, guess_lang, scoring_steps
from pipelines.common import (
    RayConfig,
    SlurmConfig,
    WriteConfig,
    check_paths,
    check_settings,
    check_shard_input,
    make_executor,
    read_steps,
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
        executor, [reader, *steps, writer], tasks, report / "logs", cfg.slurm, workers, ray=cfg.ray
    )
    return ScoreRun(run_executor, output, labels, tasks, reference)


def funnel_of(output: str | Path):
    from cpt.funnel import build_funnel

    meta = read_steps(output, "score")
    logs = Path(output) / "report" / "logs"
    return build_funnel(logs, meta["labels"], meta["tasks"], meta["n_readers"], pipeline="score")
