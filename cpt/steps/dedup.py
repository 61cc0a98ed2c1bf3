"""Deduplication steps datatrove lacks or that cpt configures: URL keys, ccNet line dedup, the side table.

- URL: datatrove's exact-dedup stages, hashing a normalised URL (`url_key`); among copies the longest
  text wins (`longest_text_first`), ties keep the first in input order.
- Lines (ccNet, Wenzek et al. 2020; Llama 3): every normalised line is hashed together with its
  document's bucket; counts are spilled to disk sharded by hash (`LineHashCounter`), summed one shard
  at a time (`FrequentLines`), and lines counted more than `max_count` times in their bucket are
  removed (`LineDedupFilter`). No stage holds more than one task's lines or one shard's counts.
- MinHash: datatrove's stages, with a signature for documents too short to shingle (`MinhashSignature`:
  exact copies of them are removed too) and an optional check of each candidate pair's real overlap.
- Removed documents go to a Parquet side table (`RemovedWriter`) naming the level and what they
  duplicated.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup import MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.writers import ParquetWriter
from datatrove.utils.typeshelper import StatHints

from cpt.steps.heuristics import word_splitter

# query parameters that identify a visit or a campaign, not a page
_TRACKING = re.compile(
    r"^(utm_[a-z_]+|gclid|dclid|fbclid|msclkid|yclid|mc_cid|mc_eid|_ga|_gl|igshid|spm|ref_src)$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str) -> str:
    """Scheme and `www.` dropped, host lower-cased, default port, fragment, trailing slash and tracking
    parameters removed, remaining query parameters sorted."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower().removeprefix("www.")
    port = f":{parts.port}" if parts.port and parts.port != _DEFAULT_PORTS.get(parts.scheme.lower()) else ""
    path = parts.path.rstrip("/") or "/"
    query = sorted(
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _TRACKING.match(k.lower())
    )
    return f"{host}{port}{path}" + (f"?{urlencode(query)}" if query else "")


def url_key(doc: Document) -> str:
    """What URL dedup hashes; a document without a URL is keyed by its id, so it is never a duplicate."""
    url = doc.metadata.get("url")
    return normalize_url(url) if url else f"id:{doc.id}"


def longest_text_first(doc: Document) -> int:
    """URL dedup priority: the longest text wins (datatrove compares priorities in [1, 65535])."""
    return max(1, min(65535, len(doc.text)))


@functools.cache
def _line_translation() -> dict[int, str | None]:
    punctuation = {i: None for i in range(0x110000) if unicodedata.category(chr(i)).startswith("P")}
    digits = {ord(c): "0" for c in "123456789"} | {
        i: "0" for i in range(0x110000) if unicodedata.category(chr(i)) == "Nd" and chr(i) != "0"
    }
    return punctuation | digits


def normalize_line(line: str) -> str:
    """ccNet's line normalisation: lower case, digits folded to 0, punctuation removed, spaces collapsed."""
    return " ".join(unicodedata.normalize("NFC", line).lower().translate(_line_translation()).split())


def line_keys(text: str, bucket: int) -> list[int | None]:
    """One 64-bit key per line (None for lines empty after normalisation), seeded by the bucket."""
    import xxhash

    keys = []
    for line in text.split("\n"):
        norm = normalize_line(line)
        keys.append(xxhash.xxh64_intdigest(norm, seed=bucket) if norm else None)
    return keys


def document_bucket(doc: Document, n_buckets: int) -> int:
    """ccNet counts lines within buckets of documents; a document's bucket comes from its id."""
    import xxhash

    return xxhash.xxh32_intdigest(doc.id) % n_buckets if n_buckets > 1 else 0


_COUNT_DTYPE = np.dtype([("key", "<u8"), ("count", "<u4")])


class LineHashCounter(PipelineStep):
    """ccNet stage 1: count line keys, spilling sorted partial counts to `shards` files by key."""

    type = "🫂 - DEDUP"
    name = "🧮 line counts (ccNet 1/3)"

    def __init__(self, output_folder: str, shards: int, n_buckets: int, spill_every: int = 2_000_000):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.shards = shards
        self.n_buckets = n_buckets
        self.spill_every = spill_every  # distinct keys held before writing them out

    def _spill(self, counts: dict[int, int], rank: int, spill: int) -> None:
        if not counts:
            return
        arr = np.fromiter(counts.items(), dtype=_COUNT_DTYPE, count=len(counts))
        shard_of = arr["key"] % self.shards
        for shard in np.unique(shard_of):
            part = np.sort(arr[shard_of == shard], order="key")
            with self.output_folder.open(f"{shard:04d}/{rank:05d}_{spill:04d}.counts", "wb") as f:
                f.write(part.tobytes())
        counts.clear()

    def run(self, data, rank: int = 0, world_size: int = 1):
        counts: dict[int, int] = {}
        spill = 0
        for doc in data:
            with self.track_time():
                for key in line_keys(doc.text, document_bucket(doc, self.n_buckets)):
                    if key is not None:
                        counts[key] = counts.get(key, 0) + 1
                self.stat_update(StatHints.total)
                if len(counts) >= self.spill_every:
                    self._spill(counts, rank, spill)
                    spill += 1
            yield doc
        self._spill(counts, rank, spill)


class FrequentLines(PipelineStep):
    """ccNet stage 2, one task per shard: sum the shard's counts, keep keys seen more than `max_count`."""

    type = "🫂 - DEDUP"
    name = "🧮 frequent lines (ccNet 2/3)"

    def __init__(self, counts_folder: str, output_folder: str, max_count: int = 6):
        super().__init__()
        self.counts_folder = get_datafolder(counts_folder)
        self.output_folder = get_datafolder(output_folder)
        self.max_count = max_count

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        files = (
            self.counts_folder.list_files(subdirectory=f"{rank:04d}")
            if self.counts_folder.isdir(f"{rank:04d}")
            else []
        )
        parts = []
        for name in files:
            with self.counts_folder.open(name, "rb") as f:
                parts.append(np.frombuffer(f.read(), dtype=_COUNT_DTYPE))
        frequent = np.array([], dtype="<u8")
        if parts:
            arr = np.concatenate(parts)
            arr.sort(order="key")
            starts = np.flatnonzero(np.r_[True, arr["key"][1:] != arr["key"][:-1]])
            totals = np.add.reduceat(arr["count"].astype(np.uint64), starts)
            frequent = arr["key"][starts][totals > self.max_count]
            self.stat_update("distinct_lines", value=len(starts))
        self.stat_update("frequent_lines", value=len(frequent))
        with self.output_folder.open(f"{rank:04d}.frequent", "wb") as f:
            f.write(frequent.astype("<u8").tobytes())
        if data:
            yield from data


class LineDedupFilter(PipelineStep):
    """ccNet stage 3: drop frequent lines; a document left with no text is removed (`lines_emptied`).

    `lines_removed` in each kept document's metadata says how many lines went.
    """

    type = "🫂 - DEDUP"
    name = "✂️ line dedup (ccNet 3/3)"

    def __init__(self, frequent_folder: str, n_buckets: int, exclusion_writer=None):
        super().__init__()
        self.frequent_folder = get_datafolder(frequent_folder)
        self.n_buckets = n_buckets
        self.exclusion_writer = exclusion_writer

    def _frequent(self) -> np.ndarray:
        """Every frequent key, sorted, 8 bytes each (a Python set of them took about 10 times more)."""
        parts = []
        for name in self.frequent_folder.list_files(glob_pattern="*.frequent"):
            with self.frequent_folder.open(name, "rb") as f:
                parts.append(np.frombuffer(f.read(), dtype="<u8"))
        keys = np.concatenate(parts) if parts else np.array([], dtype="<u8")
        keys.sort()
        return keys

    def run(self, data, rank: int = 0, world_size: int = 1):
        import contextlib

        frequent = self._frequent()
        with self.exclusion_writer if self.exclusion_writer else contextlib.nullcontext() as writer:
            for doc in data:
                self.stat_update(StatHints.total)
                with self.track_time():
                    lines = doc.text.split("\n")
                    keys = line_keys(doc.text, document_bucket(doc, self.n_buckets))
                    drop = _in_sorted([0 if k is None else k for k in keys], frequent)
                    kept = [
                        line for line, key, d in zip(lines, keys, drop, strict=True) if key is None or not d
                    ]
                    removed = len(lines) - len(kept)
                    text = "\n".join(kept).strip()
                if not text:
                    self.stat_update(StatHints.dropped, "dropped_lines_emptied")
                    if writer:
                        writer.write(doc, rank)
                    continue
                if removed:
                    self.stat_update("lines_removed", value=removed)
                doc.text = text
                doc.metadata["lines_removed"] = removed
                self.stat_update(StatHints.forwarded)
                yield doc


def _in_sorted(values: list[int], sorted_keys: np.ndarray) -> list[bool]:
    """For each value, whether it is in `sorted_keys` (a sorted uint64 array)."""
    if not len(sorted_keys):
        return [False] * len(values)
    v = np.array(values, dtype="<u8")
    at = np.minimum(np.searchsorted(sorted_keys, v), len(sorted_keys) - 1)
    return (sorted_keys[at] == v).tolist()


SHORT_TEXT = "\x00short\x00"  # sets a short document's one shingle apart from word n-grams


class MinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signatures, faster, with character shingles as an option, and one signature for
    a document too short to shingle.

    - Words: spaCy's English words are looked up once per distinct chunk (`ChunkWords`): the same shingles
      as datatrove's, so the same signatures.
    - `chars=True` (`minhash.char_languages`): shingles are n-grams of the characters left by
      `simplify_text` (spaces dropped) instead of words. For Chinese, one edited character changes one
      or two jieba words and so every word n-gram over them; character n-grams lose only n shingles per
      edit (figures in BENCHMARKS.md).
    - Short documents: datatrove shingles a document into n-grams; one with fewer than `n_grams` units
      has none, so it gets no signature and its copies are all kept. Here such a document's one shingle
      is its whole text (whitespace collapsed, case and digits kept: these are matched exactly, not
      fuzzily), so its exact copies share a signature and MinHash clusters them like any other
      duplicates. The marker keeps that shingle from ever equalling a longer document's n-gram.
    """

    def __init__(self, output_folder, config=None, language="en", chars: bool = False):
        super().__init__(output_folder, config=config, language=language)
        self.chars = chars
        self._words = None

    def units(self, text: str) -> list[str]:
        """What is shingled: the words (or characters) of the simplified text."""
        from datatrove.utils.text import simplify_text

        simple = simplify_text(text, self.config.norm_config)
        if self.chars:
            return [c for c in simple if c != " "]
        if self._words is None:
            self._words = word_splitter(self.word_tokenizer)
        return self._words(simple)

    def get_shingles(self, text: str) -> np.ndarray:
        units, n, hash_func = self.units(text), self.config.n_grams, self._hash_func
        if len(units) >= n:  # the n-grams datatrove hashes, joined as datatrove joins them
            hashes = [hash_func(" ".join(units[i : i + n])) for i in range(len(units) - n + 1)]
        else:
            whole = " ".join(text.split())
            hashes = [hash_func(SHORT_TEXT + whole)] if whole else []
        return np.array(hashes, dtype=np.uint64).reshape((-1, 1))


_PAIR_DTYPE = np.dtype([("f1", "<u4"), ("d1", "<u4"), ("f2", "<u4"), ("d2", "<u4")])


class MinhashVerifyPairs(PipelineStep):
    """Between MinHash buckets and clusters: keep a candidate pair only if the exact Jaccard similarity of
    the two documents' shingle sets reaches `min_jaccard`.

    LSH bands tuned for high recall (few rows, many bands) also let through pairs that merely share a
    band; checking the real shingle overlap of each candidate restores precision. One task, in two passes
    so that its memory does not grow with the corpus: it reads the input again and writes the sorted
    shingle hashes of every document in a candidate pair to a scratch file (holding only where each
    starts), then reads the two documents' hashes back for each pair. Python sets of every candidate's
    shingles, as before, took about 60 bytes a shingle.
    """

    type = "🫂 - DEDUP"
    name = "🔍 MinHash candidate check"

    def __init__(
        self, buckets_folder: str, output_folder: str, reader, signature, tasks: int, min_jaccard: float
    ):
        super().__init__()
        self.buckets_folder = get_datafolder(buckets_folder)
        self.output_folder = get_datafolder(output_folder)
        self.reader = reader  # the signature stage's reader: same documents, same order per task
        self.signature = signature  # a MinhashDedupSignature, used for its shingles
        self.tasks = tasks
        self.min_jaccard = min_jaccard

    def _write_shingles(self, needed: dict[int, set[int]], scratch: str) -> dict[tuple[int, int], tuple]:
        """Pass 1: each needed document's unique shingle hashes, sorted, one after another in `scratch`;
        returns where each document's run starts and how long it is."""
        where, at = {}, 0
        with self.output_folder.open(scratch, "wb") as out:
            for f in sorted(needed):
                wanted = needed[f]
                for i, doc in enumerate(self.reader.run(None, f, self.tasks)):
                    if i in wanted:
                        hashes = np.unique(self.signature.get_shingles(doc.text).ravel()).astype("<u8")
                        out.write(hashes.tobytes())
                        where[(f, i)] = (at, len(hashes))
                        at += len(hashes)
        return where

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        files = sorted(self.buckets_folder.list_files(glob_pattern="*.dups"))
        needed: dict[int, set[int]] = {}
        for name in files:
            with self.buckets_folder.open(name, "rb") as f:
                arr = np.frombuffer(f.read(), dtype=_PAIR_DTYPE)
            for fa, da in ((arr["f1"], arr["d1"]), (arr["f2"], arr["d2"])):
                for f, d in zip(fa.tolist(), da.tolist(), strict=True):
                    needed.setdefault(f, set()).add(d)
        scratch = f"{rank:05d}.shingles.tmp"
        where = self._write_shingles(needed, scratch)
        del needed
        with self.output_folder.open(scratch, "rb") as hashes:

            def shingles(key) -> np.ndarray:
                start, count = where.get(key, (0, 0))
                hashes.seek(8 * start)
                return np.frombuffer(hashes.read(8 * count), dtype="<u8")

            for name in files:  # pass 2, one bucket file at a time
                with self.buckets_folder.open(name, "rb") as f:
                    arr = np.frombuffer(f.read(), dtype=_PAIR_DTYPE)
                keep = np.zeros(len(arr), dtype=bool)
                for k, (f1, d1, f2, d2) in enumerate(arr.tolist()):
                    a, b = shingles((f1, d1)), shingles((f2, d2))
                    if len(a) or len(b):
                        inter = len(np.intersect1d(a, b, assume_unique=True))
                        keep[k] = inter / (len(a) + len(b) - inter) >= self.min_jaccard
                self.stat_update("candidate_pairs", value=len(arr))
                self.stat_update("verified_pairs", value=int(keep.sum()))
                with self.output_folder.open(name, "wb") as f:
                    f.write(arr[keep].tobytes())
        self.output_folder.rm(scratch)
        if data:
            yield from data


class MinhashClusterFilter(MinhashDedupFilter):
    """datatrove's MinHash filter, with every kept document labelled `minhash_cluster_id` (-1: none).

    datatrove skips the cluster ids of a task that has nothing to remove, and fails on a task that has
    no cluster member; here both get their labels.
    """

    def __init__(self, input_folder: str, exclusion_writer=None):
        super().__init__(input_folder, exclusion_writer=exclusion_writer, load_cluster_ids=True)

    def run(self, data, rank: int = 0, world_size: int = 1):
        has_clusters = self.data_folder.isfile(f"{rank:06d}.clusters")
        if has_clusters and not self.data_folder.isfile(f"{rank:06d}.remove"):
            self.data_folder.open(f"{rank:06d}.remove", "wb").close()  # members, none removed
        self.load_cluster_ids = has_clusters
        for doc in super().run(data, rank, world_size):
            doc.metadata.setdefault("minhash_cluster_id", -1)
            yield doc


def _removed_row(writer: RemovedWriter, doc: Document) -> dict:
    meta = doc.metadata
    if writer.level == "url":
        duplicate_of = f"url:{url_key(doc)}"
    elif writer.level == "minhash":
        duplicate_of = f"minhash_cluster:{meta.get('minhash_cluster_id', -1)}"
    else:
        duplicate_of = None  # emptied by line dedup: every line was frequent boilerplate
    return {
        "id": doc.id,
        "url": meta.get("url"),
        "lang": meta.get("lang"),
        "level": writer.level,
        "duplicate_of": duplicate_of,
        "chars": len(doc.text),
    }


class RemovedWriter(ParquetWriter):
    """The `dedup/removed` side table: one row per removed document, with the level that removed it and
    what it duplicated (`url:<normalised URL>` or `minhash_cluster:<id>`, the id kept documents carry
    in `metadata.minhash_cluster_id`)."""

    name = "🗑 removed documents"

    def __init__(self, output_folder: str | Path, level: str, lang: str):
        import pyarrow as pa

        schema = pa.schema(
            [
                ("id", pa.string()),
                ("url", pa.string()),
                ("lang", pa.string()),
                ("level", pa.string()),
                ("duplicate_of", pa.string()),
                ("chars", pa.int64()),
            ]
        )
        super().__init__(
            str(output_folder),
            output_filename=f"{lang}/{level}_${{rank}}.parquet",
            compression="zstd",
            adapter=_removed_row,
            schema=schema,
        )
        self.level = level

    def _get_output_filename(self, document, rank: int | str = 0, **kwargs) -> str:
        # the rank only: datatrove's default lets any metadata key (an input's `rank`) name the file
        return self.output_filename.substitute(rank=str(rank).zfill(5))
