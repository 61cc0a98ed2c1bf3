"""The clean/dedup shard format: Parquet, zstd, one row per document, readable without cpt.

Columns: `id`, `text`, `url`, `lang`, `lang_score`, `source`, and a `metadata` struct of scores and
flags. The schema is fixed (not inferred from the first document) so every shard of a run, and every
run, can be concatenated by pandas, polars or pyarrow without schema merging.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

METADATA_FIELDS = [
    pa.field("date", pa.string()),  # WARC-Date or the input's own date
    pa.field("file_path", pa.string()),  # the input file the document came from
    pa.field("dirty_word_share", pa.float32()),  # share of characters inside block-listed words
    pa.field("pii_redactions", pa.int32()),  # e-mails, IPs and phone numbers replaced
    pa.field(
        "minhash_cluster_id", pa.int64()
    ),  # dedup: near-duplicate cluster this document survived, -1 none
    pa.field("lines_removed", pa.int32()),  # dedup: lines dropped as frequent (ccNet) boilerplate
    # model-based filtering (cpt/steps/classify.py): fastText scores, the topic label, KL divergence
    pa.field("quality_score", pa.float32()),
    pa.field("code_score", pa.float32()),
    pa.field("math_score", pa.float32()),
    pa.field("topic", pa.string()),
    pa.field("topic_score", pa.float32()),
    pa.field("kl_divergence", pa.float32()),
]

CLEAN_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("lang", pa.string()),
        pa.field("lang_score", pa.float32()),
        pa.field("source", pa.string()),
        pa.field("metadata", pa.struct(METADATA_FIELDS)),
    ]
)

UNKNOWN_LANG = "und"  # ISO 639-2 "undetermined": documents written before language ID ran

# top-level columns that are a document's metadata too (`row_to_document` puts them there, over the
# `metadata` struct's field of the same name)
METADATA_COLUMNS = ("url", "lang", "lang_score", "source")
# the metadata keys the schema gives a type: top-level columns and the `metadata` struct's fields
_TYPED = {
    **{f.name: f.type for f in CLEAN_SCHEMA if f.name in METADATA_COLUMNS},
    **{f.name: f.type for f in METADATA_FIELDS},
}
_STRING_KEYS = frozenset(key for key, kind in _TYPED.items() if pa.types.is_string(kind))


def fit_metadata(meta: dict) -> dict:
    """An input record's metadata, in place, with every key the schema types made to fit it: a number
    where a string belongs becomes its text; a value that cannot have the type (a list, a word where a
    number belongs, an integer out of range) is dropped, not left to crash a filter or the writer."""
    for key in [k for k in meta if k in _TYPED]:  # the keys present only: this runs once a document
        value, kind = meta[key], _TYPED[key]
        if value is None or (type(value) is str and key in _STRING_KEYS):
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if pa.types.is_string(kind):
            fits = isinstance(value, str) or number
            if fits and not isinstance(value, str):
                meta[key] = str(value)
        elif pa.types.is_integer(kind):
            bound = 2 ** (kind.bit_width - 1)
            fits = number and float(value).is_integer() and -bound <= value < bound
            if fits:
                meta[key] = int(value)
        else:  # float32: out-of-range magnitudes become inf, as in numpy
            fits = number
            if fits:
                meta[key] = float(value)
        if not fits:
            del meta[key]
    return meta


# what names an input file's kind, stripped from its name to give its stem (`news.jsonl.gz` -> `news`)
_INPUT_SUFFIXES = (
    ".gz",
    ".zst",
    ".bz2",
    ".xz",
    ".jsonl",
    ".json",
    ".parquet",
    ".warc",
    ".wet",
    ".arc",
    ".txt",
)


def file_stem(path: str | None) -> str | None:
    """The name of an input file without its kind's suffixes, or None for no path."""
    if not path:
        return None
    name = Path(path).name
    while name.lower().endswith(_INPUT_SUFFIXES) and "." in name[1:]:
        name = name[: name.rindex(".")]
    return name or None


def document_row(doc, source: str | None) -> dict:
    """Map a datatrove Document onto a CLEAN_SCHEMA row. Its `source`: the document's own (a `source`
    field or column), else `source` (the run's --source), else the stem of its input file."""
    meta = doc.metadata
    return {
        "id": doc.id,
        "text": doc.text,
        "url": meta.get("url"),
        "lang": meta.get("lang") or UNKNOWN_LANG,
        "lang_score": meta.get("lang_score"),
        "source": meta.get("source") or source or file_stem(meta.get("file_path")) or "input",
        "metadata": {f.name: meta.get(f.name) for f in METADATA_FIELDS},
    }


def row_to_document(reader, row: dict, path: str, id_in_file: int | str) -> dict:
    """Adapter for datatrove's ParquetReader: a CLEAN_SCHEMA row back into a Document's fields."""
    struct = row.get("metadata")
    metadata = {k: v for k, v in struct.items() if v is not None} if isinstance(struct, dict) else {}
    for key in METADATA_COLUMNS:
        if row.get(key) is not None:
            metadata[key] = row[key]
    return {
        "text": row.get("text") or "",
        "id": row.get("id") or f"{path}/{id_in_file}",
        "metadata": metadata,
    }


# what a pipeline output holds beside its shards: its report, removed documents, work files
BOOKKEEPING = frozenset({"report", "removed", ".work"})


def shard_files(folder: str | Path) -> list[Path]:
    """The Parquet shards of a clean/dedup/score output, sorted; FileNotFoundError when there are none."""
    folder = Path(folder)
    files = [
        p for p in sorted(folder.rglob("*.parquet")) if not BOOKKEEPING & set(p.relative_to(folder).parts)
    ]
    if not files:
        raise FileNotFoundError(f"{folder}: no Parquet shards (expected a clean or dedup output)")
    return files


class ShardReadError(ValueError):
    """A Parquet file that cannot be read as documents: the message names the file."""


def batch_rows(batch) -> tuple[list[dict], int]:
    """A record batch as dicts, and how many string values held invalid UTF-8.

    Arrow does not check that a Parquet string column is UTF-8, and its conversion to Python raises on
    the first bad value, which would lose the whole shard: such values are decoded with U+FFFD in place of
    the bad bytes (what `errors="replace"` gives) and counted, and the rows are kept."""
    try:
        return batch.to_pylist(), 0
    except UnicodeDecodeError:
        pass
    bad, columns = 0, {}
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            columns[name] = column.to_pylist()
            continue
        values = []
        raw = column.cast(pa.large_binary() if pa.types.is_large_string(column.type) else pa.binary())
        for value in raw.to_pylist():
            if value is None:
                values.append(None)
                continue
            try:
                values.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(value.decode("utf-8", errors="replace"))
                bad += 1
        columns[name] = values
    return [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)], bad


def read_rows(
    path: str | Path,
    columns: Sequence[str] = ("text",),
    optional: Sequence[str] = (),
    batch_size: int = 1024,
    counts: dict | None = None,
) -> Iterator[dict]:
    """The rows of one Parquet shard as dicts of `columns` (which must exist) and `optional` columns
    (None where the file lacks them), streamed a batch at a time: the one reader of text from Parquet.

    ShardReadError names the file when it is not Parquet or lacks a required column. String values of
    invalid UTF-8 are repaired (`batch_rows`) and, when `counts` is given, counted in its
    `repaired_utf8`."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path, pre_buffer=False)  # one row group in memory, not the whole file
    except (OSError, pa.ArrowException) as e:
        raise ShardReadError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ShardReadError(
            f"{path}: no `{missing[0]}` column (columns: {', '.join(names)}); expected a clean or dedup shard"
        )
    present = list(columns) + [c for c in optional if c in names and c not in columns]
    absent = [c for c in optional if c not in names]
    with pf:
        for batch in pf.iter_batches(columns=present, batch_size=batch_size):
            rows, repaired = batch_rows(batch)
            if counts is not None and repaired:
                counts["repaired_utf8"] = counts.get("repaired_utf8", 0) + repaired
            for row in rows:
                for c in absent:
                    row[c] = None
                yield row
