"""The `tokenize` pipeline (named tokenization.py: a `tokenize.py` beside run.py would shadow Python's own
module of that name): clean/dedup shards -> token shards (see cpt/tokens), via datatrove.

read Parquet shards -> DocumentTokenizer (EOS after every document, no shuffling: the mixer
decides the order) -> one last task writes tokens.json (files, counts, source, tokenizer hash)
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cpt.config import ConfigError, apply_overrides, build, read_yaml
from cpt.io import write_json, write_text
from cpt.steps.write import OTHER
from pipelines.common import (
    RayConfig,
    SlurmConfig,
    add_run_options,
    add_shard_input,
    check_settings,
    check_tasks,
    make_executor,
    sbatch_script,
    shard_inputs,
    submitted,
    unfinished_tasks,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "tokenize.yaml"


@dataclass
class TokenizeConfig:
    # each source's jobs are named <job_name>-<source>
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig(job_name="cpt-tokenize"))
    ray: RayConfig = field(default_factory=RayConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TokenizeConfig:
    path = Path(path) if path else DEFAULT_CONFIG
    return build(TokenizeConfig, apply_overrides(read_yaml(path), overrides or []), str(path))


@dataclass
class TokenizeRun:
    executors: list
    output: Path
    tasks: int
    folders: list[Path] = field(default_factory=list)  # the token-shard folders written
    languages: list[str] | None = None  # the input's languages, when they were split without --split-by


def _default_eos(folder: Path) -> str:
    """The tokenizer's own end-of-text token (tokenizer_config.json's eos_token), else LLaMA's `</s>`."""
    import json

    try:
        eos = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("eos_token")
    except (OSError, ValueError, AttributeError):
        return "</s>"
    if isinstance(eos, dict):  # an AddedToken written out
        eos = eos.get("content")
    return eos if isinstance(eos, str) and eos else "</s>"


def prepare(
    input_dir: str | Path | list,
    tokenizer: str | Path,
    output: str | Path,
    source: str | None = None,
    tasks: int | None = None,
    executor: str = "local",
    workers: int | None = None,
    eos_token: str | None = None,
    progress: bool = True,
    record: bool = True,
    split_by: str | None = None,
    cfg: TokenizeConfig | None = None,
) -> TokenizeRun:
    from cpt.shards import row_to_document
    from cpt.steps.read import CountingParquetReader
    from cpt.tokens import (
        SplitDocumentTokenizer,
        TokensManifestStep,
        document_tokenizer,
        load_tokenizer,
        tokenizer_hash,
    )

    cfg = cfg or TokenizeConfig()
    output, tokenizer = Path(output), Path(tokenizer)
    named = input_dir if isinstance(input_dir, str | Path) else " ".join(map(str, input_dir))
    input_dir, files, given = shard_inputs(input_dir, output, "tokenize")
    if not any(_may_hold_documents(f) for f in files):  # else: a 0-document tokens.json, and exit 0
        raise ConfigError(
            str(named),
            [f"no documents to tokenize: its {len(files)} Parquet shard(s) hold no row with text"],
        )
    tokenizer_json = tokenizer / "tokenizer.json" if tokenizer.is_dir() else tokenizer
    if not tokenizer_json.is_file():
        raise FileNotFoundError(f"{tokenizer}: no tokenizer.json (use a folder written by `cpt-tok merge`)")
    try:
        loaded = load_tokenizer(tokenizer_json)  # its tokenizing step takes this one over
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception for a bad file
        raise ConfigError(
            str(tokenizer_json), [f"not a tokenizer.json the tokenizers library reads ({e})"]
        ) from None
    vocab = loaded.get_vocab_size()
    eos_token = eos_token or _default_eos(tokenizer_json.parent)
    if eos_token not in loaded.get_vocab():
        raise ConfigError("--eos", [f"{eos_token!r} is not a token of {tokenizer}"])
    token_size = 2 if vocab <= 2**16 else 4
    source = source or output.name
    tasks = tasks or len(files)
    languages, values = None, None
    if split_by is None:  # a stage weighs languages apart (its replay share): never one folder of several
        values = metadata_values(files, "lang")  # read once: the split's folders are these values
        languages = [v for v in values if v != OTHER]
        split_by = "lang" if len(languages) > 1 else None
    elif split_by == "none":  # asked for: one folder whatever the input holds
        split_by = None
    settings = {
        "input": given,
        "tokenizer_sha256": tokenizer_hash(tokenizer_json),
        "source": source,
        "tasks": tasks,
        "eos": eos_token,
        "split_by": split_by,
    }
    report = output / "report"
    check_settings(report, output, settings, record, inputs=files, root=input_dir)

    paths_file = report / "inputs.txt"
    if record:
        write_text(paths_file, "".join(str(p.relative_to(input_dir)) + "\n" for p in files))
    # --split-by topic: one token-shard folder per value (OUTPUT/<value>/, or its encoded name when the
    # value is no plain name; its tokens.json labelled with the value), so a stage can select them
    # (`where: topic in [math, science]`)
    groups = (
        {None: output}
        if split_by is None
        else {v: output / folder_name(v) for v in values or metadata_values(files, split_by)}
    )
    # without --split-by no metadata is needed: only the text and id columns are read
    reader = CountingParquetReader(
        str(input_dir),
        paths_file=str(paths_file),
        adapter=row_to_document,
        doc_progress=progress and tasks == 1,
        read_metadata=split_by is not None,
    )
    if split_by is None:
        tokenize = document_tokenizer(str(output), str(tokenizer_json), eos_token)
    else:  # one pass over the input, each document written to its value's folder
        folders = {value: str(folder) for value, folder in groups.items()}
        tokenize = SplitDocumentTokenizer(split_by, folders, str(tokenizer_json), eos_token)
    slurm = dataclasses.replace(cfg.slurm, job_name=f"{cfg.slurm.job_name}-{source}")
    logs = report / "logs"
    executors = [
        make_executor(
            executor, [reader, tokenize], tasks, logs / "tokenize", slurm, workers, ray=cfg.ray,
            progress=progress, desc="tokenize",
        )
    ]  # fmt: skip
    for value, folder in groups.items():  # then each folder's tokens.json, one after the other
        labels = {split_by: value} if split_by else None
        manifest = TokensManifestStep(
            str(folder),
            source if value is None else f"{source}/{value}",
            str(tokenizer_json),
            token_size,
            labels,
        )
        manifest_logs = logs / "manifest" if value is None else logs / "manifest" / folder_name(value)
        executors.append(
            make_executor(
                executor, [manifest], 1, manifest_logs, slurm, workers, depends=executors[-1], ray=cfg.ray
            )
        )
    if record:
        write_json(report / "steps.json", {"pipeline": "tokenize", "tasks": tasks, "folders": len(groups)})
    return TokenizeRun(
        executors,
        output,
        tasks,
        list(groups.values()),
        languages if split_by == "lang" and languages else None,
    )


_RESERVED = {"report"}  # the run's own folder beside the value folders


def _kept(c: str) -> bool:
    return c.isalnum() or c in "_-"  # letters and digits of any script: Chinese labels stay readable


def folder_name(value: str) -> str:
    """The folder under OUTPUT of a --split-by value: the value itself when it is a plain name (letters,
    digits, `_`, `-` and `.`, not starting with `.`, at most 200 bytes), else the value with every other
    character percent-encoded (`Sci/Tech` -> `Sci%2FTech`, `..` -> `%2E%2E`, `report` -> `%72eport`).

    The values are data (a classifier's labels, any metadata field), so they must never name a path
    outside OUTPUT or the run's `report/`. Encoding rather than refusing keeps labels such as
    `Sci/Tech` usable: distinct values get distinct folders (every encoded name holds a `%`, no plain
    one does, and the encoding is reversible), and a stage selects by the exact value recorded in each
    folder's tokens.json labels, not by the folder name."""
    raw = value.encode("utf-8")
    plain = all(_kept(c) or c == "." for c in value) and not value.startswith(".") and len(raw) <= 200
    if value and plain and value not in _RESERVED:
        return value
    first = 1 if value in _RESERVED else 0  # `report`: its first letter encoded, so it is not the folder
    name = "".join(
        c if i >= first and _kept(c) else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
        for i, c in enumerate(value)
    )
    if not name:
        return "%"  # the empty value
    if len(name.encode("utf-8")) > 200:  # a file-system name has at most 255 bytes; `%~` is no encoding
        name = (
            name.encode("utf-8")[:180].decode("utf-8", "ignore") + "%~" + hashlib.sha256(raw).hexdigest()[:16]
        )
    return name


def _may_hold_documents(path: Path) -> bool:
    """False when the footer of a shard shows that no row has text (no rows, or every text null or
    empty); True when its statistics cannot tell. Reading the footer costs nothing next to the data."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    column = next((i for i in range(meta.num_columns) if meta.schema.column(i).path == "text"), None)
    if column is None:  # `text` is a list or struct column: its statistics cannot tell, the readers count it
        return True
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:
            if group.num_rows > (stats.null_count if stats is not None and stats.has_null_count else 0):
                return True
        elif stats.max not in ("", b""):
            return True
    return False


def metadata_values(files: list[Path], key: str) -> list[str]:
    """The distinct values of `metadata.<key>` in the shards (documents without one: `other`), as the
    reader gives them to documents (`row_to_document`: a top-level `url`, `lang`, `lang_score` or `source`
    column over the struct's field). Only those columns are read, a row group at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cpt.shards import METADATA_COLUMNS

    values = set()
    for path in files:
        shard = pq.ParquetFile(path, pre_buffer=False)  # one row group in memory, not the whole file
        schema = shard.schema_arrow
        meta = schema.field("metadata").type if "metadata" in schema.names else None
        top = key in METADATA_COLUMNS and key in schema.names
        nested = isinstance(meta, pa.StructType) and meta.get_field_index(key) >= 0
        if not (top or nested):  # no such column: every document is `other`
            if shard.metadata.num_rows:
                values.add(OTHER)
            continue
        columns = ([key] if top else []) + ([f"metadata.{key}"] if nested else [])
        for batch in shard.iter_batches(columns=columns, batch_size=65_536):
            found = ([batch.column(key)] if top else []) + (
                [pc.struct_field(batch.column("metadata"), key)] if nested else []
            )
            if len(found) == 2 and found[0].type != found[1].type:  # rare: coalesced value by value
                pairs = zip(found[0].to_pylist(), found[1].to_pylist(), strict=True)
                seen = [t if t is not None else n for t, n in pairs]
            else:  # the top-level column's value, else the struct's
                seen = pc.unique(pc.coalesce(*found)).to_pylist()
            values.update(str(v) if v is not None else OTHER for v in seen)
    if not values:
        raise FileNotFoundError(f"no documents to split by {key}")
    return sorted(values)


def add_arguments(sub) -> None:
    """The `run.py tokenize` sub-command and its options."""
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
    add_shard_input(p)
    p.add_argument(
        "--tokenizer", required=True, help="tokenizer folder with tokenizer.json (cpt-tok merge output)"
    )
    p.add_argument("--output", required=True, help="token shard folder, e.g. data/tokens/zh_web")
    p.add_argument("--source", help="source name recorded in tokens.json (default: the output folder's name)")
    p.add_argument(
        "--eos",
        help="end-of-document token (default: the tokenizer's eos_token in tokenizer_config.json, e.g. "
        "<|end_of_text|> for Llama 3, else </s>)",
    )
    p.add_argument(
        "--split-by",
        metavar="KEY",
        help="one token-shard folder per value of metadata KEY (e.g. topic, from `score`): OUTPUT/<value>/, "
        "selectable in a stage with `where: topic in [...]`. Without it, an input of several languages is "
        "split by `lang` (OUTPUT/en/, OUTPUT/zh/: a stage weighs them apart); `none`: one folder for all",
    )
    add_run_options(
        p,
        "tokenize",
        "slurm.partition=cpu",
        "local processes (default), or a Slurm array job and a dependent manifest job",
        "tokenizing tasks (default: one per Parquet shard)",
    )


def command(args) -> int:
    """`run.py tokenize`: prepare the run, then run it (or submit it, or print it with --dry-run)."""
    from cpt.tokens import TokenShards

    cfg = load_config(args.config, args.overrides)
    check_tasks(args.tasks, args.workers)
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
    if run.languages:
        print(
            f"tokenize: the input holds {len(run.languages)} languages ({', '.join(run.languages)}): one token "
            f"folder each, {run.output}/<lang>/ (--split-by none: one folder for all)",
            file=sys.stderr,
        )
    if args.dry_run:
        print(
            f"tokenize: {' '.join(args.input)} -> {run.output}  ({run.tasks} tasks, executor {args.executor})"
        )
        for folder in run.folders:
            print(f"  {folder}")
        if args.executor == "slurm":
            print("\n# first sbatch script:\n" + sbatch_script(run.executors[0]))
        return 0
    run.executors[-1].run()
    if args.executor == "slurm" and not submitted(
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
            f"{folder}: {_count(m['documents'], 'document')}, {_count(m['tokens'], 'token')} ({m['dtype']}) "
            f"in {_count(len(m['files']), 'file')}; tokenizer sha256 {m['tokenizer_sha256'][:12]}…"
        )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
