"""Write clean shards: Parquet (zstd, fixed schema), one folder per language, bounded file size.

Files are written under a `.tmp` name and renamed when the task finishes, so a reader never sees a
half-written shard: a task that is killed or fails leaves only `.tmp` files, which its rerun overwrites.
"""

from __future__ import annotations

import re

from datatrove.pipeline.writers import ParquetWriter

from cpt.shards import BOOKKEEPING, CLEAN_SCHEMA, UNKNOWN_LANG, document_row

TMP_SUFFIX = ".tmp"

# a folder name taken from a document: a language code (lid.176 labels: en, zh, nds, ...) or a route
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


def is_safe_name(value) -> bool:
    """True for a string that can be a folder under the output as it is: letters, digits, `_` and `-`,
    at most 32 characters; never `.`, `..`, a separator or an absolute path, and never a folder that
    holds a run's bookkeeping (shards there would be counted as written, then never read again)."""
    return (
        isinstance(value, str)
        and _SAFE_NAME.fullmatch(value) is not None
        and value not in BOOKKEEPING | {"dedup"}
    )


def _row_adapter(writer: ShardWriter, doc) -> dict:
    return document_row(doc, writer.source)


class ShardWriter(ParquetWriter):
    """ParquetWriter with cpt's schema, `[route/]${lang}/` routing and write-then-rename."""

    name = "📒 Parquet shards (cpt)"

    def __init__(
        self,
        output_folder: str,
        source: str | None,
        max_file_size: int = 512 * 2**20,
        rows_per_group: int = 1000,
        compression: str = "zstd",
    ):
        super().__init__(
            output_folder,
            output_filename="${route}${lang}/${rank}.parquet" + TMP_SUFFIX,
            compression=compression,
            adapter=_row_adapter,
            batch_size=rows_per_group,
            max_file_size=max_file_size,
            schema=CLEAN_SCHEMA,
            # pyarrow 26 aborts the process (a failed CHECK in column_writer.cc, exit 134) when a write
            # under content-defined chunking fails, as on a full disk; chunking only helps uploads to
            # a deduplicating store (the Hub's Xet), which shards that feed the next pipeline are not
            use_content_defined_chunking=False,
        )
        self.source = source
        self._written: set[str] = set()

    def _get_output_filename(self, document, rank: int | str = 0, **kwargs) -> str:
        # documents written before language ID ran go to `und/`; a classifier's `route` (code, math)
        # sends a document to `<route>/<lang>/`. Only these two come from the document, and `write` has
        # made them safe names: datatrove would take any metadata key, so an input field `rank` would
        # make two tasks write one file and `lang: ../../x` would name a path outside the output
        meta = document.metadata
        route = meta.get("route")
        return self.output_filename.substitute(
            rank=str(rank).zfill(5), lang=meta.get("lang") or UNKNOWN_LANG, route=f"{route}/" if route else ""
        )

    def write(self, document, rank: int = 0, **kwargs):
        # `lang` and `route` may come from the input (a jsonl field, a Parquet column) rather than from
        # language ID or a classifier: a value that is not a plain name must not pick a folder. The
        # document is kept, under `und/` (its `lang` column says so too) or without the route, and
        # counted as `rerouted_unsafe_<key>`
        meta = document.metadata
        for key in ("lang", "route"):
            value = meta.get(key)
            if value is not None and value != "" and not is_safe_name(value):
                self.stat_update(f"rerouted_unsafe_{key}")
                if key == "lang":
                    meta[key] = UNKNOWN_LANG
                else:
                    del meta[key]
        super().write(document, rank, **kwargs)

    def _write(self, document: dict, file_handler, filename: str):
        name = self._get_filename_with_file_id(filename) if self.max_file_size > 0 else filename
        self._written.add(name)
        super()._write(document, file_handler, filename)

    def __exit__(self, exc_type, exc_val, exc_tb):
        # a task that fails keeps its `.tmp` names: only a finished task's shards look final
        self._commit = exc_type is None
        super().__exit__(exc_type, exc_val, exc_tb)

    def close(self):
        super().close()
        if getattr(self, "_commit", True):
            for name in sorted(self._written):
                self.output_folder.mv(name, name[: -len(TMP_SUFFIX)])
        self._written.clear()


OTHER = "other"  # the value (and folder) of documents without one of the split-by key
