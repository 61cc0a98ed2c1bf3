"""Readers for web crawls and text dumps that count every record and never stop on broken input.

datatrove's WarcReader drops non-HTML and undecodable records silently and stops the task on the
first truncated gzip member or broken header. These readers keep datatrove's file sharding, limits
and progress bars, but account for every record in the funnel (in = kept + removed, by reason) and
resynchronise at the next record after a broken one.
"""

from __future__ import annotations

import io
import os
import re
import zlib
from pathlib import Path

import numpy as np
from datatrove.pipeline.readers import JsonlReader, ParquetReader, WarcReader
from datatrove.pipeline.readers.base import BaseReader
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints
from warcio.bufferedreaders import DecompressingBufferedReader

from cpt.funnel import add_stats
from cpt.io import write_text
from cpt.shards import batch_rows, fit_metadata

# Plain-text inputs (WET conversions, jsonl, parquet) are marked so the extractor lets them through.
FORMAT_KEY = "format"
HTML, TEXT = "html", "text"

INPUT_KINDS = {
    "warc": (".warc", ".warc.gz", ".arc", ".arc.gz"),
    "wet": (".wet", ".wet.gz", ".warc.wet", ".warc.wet.gz"),
    "jsonl": (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".jsonl.zstd"),
    "parquet": (".parquet",),
    "txt": (".txt", ".txt.gz", ".txt.zst", ".utf8"),
}

HTML_TYPES = {"text/html", "application/xhtml+xml"}
_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.IGNORECASE)
_HTML_SNIFF = (b"<!doctype html", b"<html", b"<head", b"<body", b"<title", b"<div", b"<p>")
_GZIP_MAGIC = b"\x1f\x8b\x08"
_WARC_MAGIC = b"WARC/"


def input_kind(name: str) -> str | None:
    """Which reader handles a file, judged by its name; None for files cpt does not read."""
    lower = name.lower()
    # WET before WARC: "x.warc.wet.gz" ends with a WET suffix
    for kind in ("wet", "warc", "jsonl", "parquet", "txt"):
        if lower.endswith(INPUT_KINDS[kind]):
            return kind
    return None


class _CountingReader:
    """Mixin: count `total` and `forwarded` for each document a reader hands on.

    Counting happens in `run`, after datatrove's `limit`/`skip`, so a document read but cut by the
    limit is counted nowhere and the funnel stays conserved. Records a reader drops are counted as
    `total` plus `dropped_<reason>` where they are dropped.
    """

    COUNT_EVERY = 10_000  # documents whose counts and lengths are merged into the stats at once
    # a text longer than this many characters is dropped as `too_large` as it is read (clean's
    # extract.max_chars; WARC pages are held to it by the extract step, on their HTML); None: no cap
    max_chars: int | None = None

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        self._lengths: list[int] = []  # of the documents handed on and not yet in the stats
        try:
            for doc in super().run(None, rank, world_size):
                if len(self._lengths) >= self.COUNT_EVERY:
                    self._count()
                yield doc
        finally:  # also when the pipeline stops reading early
            self._count()

    def update_doc_stats(self, document) -> None:
        """datatrove's (`doc_len`, `doc_len_tokens`) with `total`, `forwarded` and `doc_len` kept in
        `_lengths` until `_count` merges them (the same stats; a `stat_update` a document was a tenth
        of `tokenize`'s time)."""
        self._lengths.append(len(document.text))
        if token_count := document.metadata.get("token_count", None):
            self.stat_update("doc_len_tokens", value=token_count, unit="doc")

    def _count(self) -> None:
        if self._lengths:
            add_stats(self, [StatHints.total, StatHints.forwarded], np.ones(len(self._lengths), np.int64))
            add_stats(self, ["doc_len"], self._lengths)
            self._lengths = []

    def drop(self, reason: str, n: int = 1) -> None:
        self.stat_update(StatHints.total, StatHints.dropped, f"dropped_{reason}", value=n)

    def get_document_from_dict(self, data: dict, source_file: str, id_in_file: int):
        """datatrove's, with the file's resolved path worked out once a file instead of once a document
        (fsspec's path joining was a tenth of `tokenize`'s time)."""
        document = BaseReader.get_document_from_dict(self, data, source_file, id_in_file)
        if document and getattr(self, "add_file_path", False):
            if getattr(self, "_resolved", (None,))[0] != source_file:
                self._resolved = (source_file, self.data_folder.resolve_paths(source_file))
            document.metadata.setdefault("file_path", self._resolved[1])
        return document

    def to_document(self, data: dict, filepath: str, index: int):
        """datatrove's Document for a parsed record, or None, counted, when its text is missing, null or
        blank (`empty`) or not a string (`bad_text`, e.g. a number in a jsonl `text` field)."""
        document = self.get_document_from_dict(data, filepath, index)
        if document is None or (isinstance(document.text, str) and not document.text.strip()):
            self.drop("empty")
            return None
        if not isinstance(document.text, str):
            self.drop("bad_text")
            return None
        if self.max_chars is not None and len(document.text) > self.max_chars:
            self.drop("too_large")
            return None
        # the shard schema's id is a non-null string: a number or null from the input is not one
        if document.id is None or document.id == "":
            document.id = f"{filepath}/{index}"
        elif not isinstance(document.id, str):
            document.id = str(document.id)
        fit_metadata(document.metadata)
        return document


class RobustWarcReader(_CountingReader, WarcReader):
    """WARC/WET reader: HTML responses (and WET conversions) become documents; the rest is counted.

    Both gzip layouts are read: one member per record (what crawlers write, resynchronised member by
    member after damage) and one stream for the whole file (`gzip file.warc`). A file that holds no
    WARC record at all (a page or text under a .warc name) is one `not_warc`, not records.
    """

    name = "🕷 Warc (cpt)"

    def __init__(self, data_folder, **kwargs):
        # compression=None: warcio reads gzip member by member, which lets us resynchronise
        super().__init__(data_folder, compression=None, **kwargs)

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb") as f:
            if not _looks_like_warc(f):
                self.drop("not_warc")  # once per file: its bytes are no records to count one by one
                logger.warning(f"{filepath}: not a WARC file (no WARC header in its first MiB): skipped")
                return
            f.seek(0)
            gzipped = f.read(3) == _GZIP_MAGIC
            yield from self._read_records(f, filepath, _GZIP_MAGIC if gzipped else _WARC_MAGIC)

    def _read_records(self, f, filepath: str, magic: bytes, ri: int = 0, skip: int = 0, stream: bool = False):
        """Records from `f`; after a broken one, go on at the next `magic` (gzip member or WARC header).

        `stream`: `f` is the inflated view of a whole-file gzip, whose first `skip` records were read
        already, as one member, before the layout showed.
        """
        from warcio.archiveiterator import ArchiveIterator

        offset = 0
        in_broken_region = False  # one garbled stretch of bytes counts once, however warcio trips on it
        while offset is not None:
            f.seek(offset)
            records = ArchiveIterator(f, check_digests=False)
            records.reader = _StrictReader(records.fh, block_size=records.reader.block_size)
            records.INC_RECORD = _Notice(filepath)
            record_start = offset
            try:
                for record in records:
                    record_start = records.offset
                    if skip:
                        skip -= 1
                        continue
                    with self.track_time():
                        data, reason = parse_record(record)
                    if reason == "broken_record" and in_broken_region:
                        continue
                    in_broken_region = reason == "broken_record"
                    if reason:
                        self.drop(reason)
                    elif (document := self.to_document(data, filepath, ri)) is not None:
                        yield document
                    ri += 1
                # warcio stops silently at a member it cannot inflate (a truncated download): if
                # bytes are left after the last complete record, count them and look further on
                offset = None
                f.seek(records.offset)
                if f.read(64).strip(b"\r\n\x00 "):
                    reason = "truncated_gzip" if magic == _GZIP_MAGIC else "broken_record"
                    try:
                        offset = _next_record_start(f, records.offset + 1, magic)
                    except (EOFError, zlib.error, OSError):
                        offset = None
                    if offset is None and getattr(f, "cut", False):  # an inflated stream cut short
                        reason = "truncated_gzip"
                    self.drop(reason)
            except Exception as e:  # noqa: BLE001 - any parse failure of a crawl file is data, not a bug
                if not stream and _is_whole_file_gzip(e):
                    # the member at record_start holds more records than the one read from it: read it
                    # on as one inflated stream (its first record is counted already)
                    view = _Inflated(f, record_start)
                    yield from self._read_records(view, filepath, _WARC_MAGIC, ri, skip=1, stream=True)
                    return
                compression = _is_compression_error(e)
                if not in_broken_region:
                    self.drop(_damage_reason(e) if compression else "broken_record")
                in_broken_region = True
                ri += 1
                if stream and compression:
                    return  # a damaged or cut deflate stream has no later point to start inflating from
                try:
                    offset = _next_record_start(f, record_start + 1, magic)
                except (EOFError, zlib.error, OSError):  # the inflated stream ends in damage: counted above
                    return


class _Notice(str):
    """warcio's notice of a record not followed by its blank line (its Content-Length is wrong), which
    warcio writes to stderr itself, four lines a record, through `INC_RECORD.format`: here it is one
    line of the task's log. What the bad length did to the records is counted in the funnel."""

    def __new__(cls, filepath: str):
        notice = super().__new__(cls, "")
        notice.filepath = filepath
        return notice

    def format(self, offset, remainder) -> str:  # noqa: A003 - the method warcio calls
        logger.info(
            f"{self.filepath}: the WARC record before offset {offset} is not followed by a blank line"
        )
        return ""


class _StrictReader(DecompressingBufferedReader):
    """warcio's record reader, except that a gzip member which fails part-way raises: warcio writes the
    error to stderr and reads on as if the rest of the file were empty, so every later record would
    be lost uncounted. Raised, it is counted and reading resumes at the next member."""

    def _decompress(self, data):
        if self.decompressor and data and self.num_block_read:
            return self.decompressor.decompress(data)
        return super()._decompress(data)


class _Inflated(io.RawIOBase):
    """The inflated bytes of the gzip stream in `f` from `start` on, member after member; seekable
    (backwards by inflating again from `start`). Unlike gzip.GzipFile, a stream cut short yields every
    byte it holds before the EOFError that reports the cut, so the records before it are read."""

    def __init__(self, f, start: int = 0):
        super().__init__()
        self.f, self.start = f, start
        self._rewind()

    def _rewind(self) -> None:
        self.f.seek(self.start)
        self.d, self.fresh = zlib.decompressobj(31), True  # fresh: this member has had no input yet
        self.pos, self.buf, self.pending, self.cut = 0, memoryview(b""), b"", False  # buf: sliced, not copied

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _fill(self) -> bool:
        """Inflate more into `buf`; False at the clean end of the stream."""
        while not self.buf:
            chunk = self.pending or self.f.read(1 << 16)
            if not chunk:
                if self.fresh:
                    return False
                self.cut = True
                return False
            self.buf, self.fresh = memoryview(self.d.decompress(chunk, 1 << 20)), False
            if self.d.eof:  # the next member, if any, starts in what this one left
                self.pending, self.d, self.fresh = self.d.unused_data, zlib.decompressobj(31), True
            else:
                self.pending = self.d.unconsumed_tail
        return True

    def readinto(self, b) -> int:
        n = 0
        while n < len(b) and (self.buf or self._fill()):
            k = min(len(b) - n, len(self.buf))
            b[n : n + k], self.buf = self.buf[:k], self.buf[k:]
            n += k
        self.pos += n
        if not n and self.cut:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        return n

    def seek(self, pos: int, whence: int = 0) -> int:
        target = pos if whence == 0 else self.pos + pos
        if whence not in (0, 1) or target < 0:
            raise io.UnsupportedOperation("seek from the end of an inflated stream")
        if target < self.pos:
            self._rewind()
        while self.pos < target and (self.buf or self._fill()):
            k = min(target - self.pos, len(self.buf))
            self.buf, self.pos = self.buf[k:], self.pos + k
        return self.pos

    def tell(self) -> int:
        return self.pos


def _is_whole_file_gzip(e: Exception) -> bool:
    from warcio.exceptions import ArchiveLoadFailed

    return isinstance(e, ArchiveLoadFailed) and "non-chunked" in str(e)


def _damage_reason(e: Exception) -> str:
    """`corrupt_gzip` for bytes that do not inflate (a flipped bit, a bad checksum), else `truncated_gzip`."""
    return "corrupt_gzip" if isinstance(e, zlib.error) else "truncated_gzip"


def _is_compression_error(e: Exception) -> bool:
    return isinstance(e, (EOFError, zlib.error)) or "gzip" in str(e).lower() or "decompress" in str(e).lower()


_SNIFF_BYTES = 1 << 20


def _looks_like_warc(f) -> bool:
    """False when the first MiB of a file (inflated) has no WARC or ARC header: an HTML page or plain
    text under a .warc name. A gzip damaged from its first byte is left to the record reader, which
    counts it as truncated."""
    f.seek(0)
    gzipped = f.read(3) == _GZIP_MAGIC
    f.seek(0)
    head = _inflate_head(f, _SNIFF_BYTES) if gzipped else f.read(_SNIFF_BYTES)
    if not head.strip():
        return True  # empty (or not inflatable at all): no record to count, or the reader counts the damage
    return head.lstrip().startswith((_WARC_MAGIC, b"filedesc://")) or b"\n" + _WARC_MAGIC in head


def _inflate_head(f, limit: int) -> bytes:
    """Up to `limit` inflated bytes from the start of a gzip file, member after member, until damage."""
    out, d, pending = bytearray(), zlib.decompressobj(31), b""
    try:
        while len(out) < limit:
            pending = pending or f.read(1 << 16)
            if not pending:
                break
            out += d.decompress(pending, limit - len(out))
            if d.eof:  # the next member, if any, starts in what this one left
                pending, d = d.unused_data, zlib.decompressobj(31)
            else:
                pending = d.unconsumed_tail
    except zlib.error:
        pass
    return bytes(out)


def _next_record_start(f, start: int, magic: bytes, chunk: int = 1 << 20) -> int | None:
    """Offset of the next gzip member (or plain `WARC/` header) at or after `start`, None if none."""
    pos = start
    while True:
        f.seek(pos)
        block = f.read(chunk + len(magic))
        if not block:
            return None
        hit = block.find(magic)
        if hit >= 0:
            return pos + hit
        if len(block) < chunk:
            return None
        pos += chunk


def parse_record(record) -> tuple[dict | None, str | None]:
    """(document dict, None) for an HTML response or a WET conversion, else (None, removal reason)."""
    rec_type = record.rec_type
    if not rec_type:
        return None, "broken_record"  # no WARC-Type: a garbled header warcio parsed leniently
    if rec_type not in ("response", "conversion", "resource"):
        return None, f"warc_{rec_type}"
    http = record.http_headers
    if rec_type == "response" and http is not None:
        status = http.get_statuscode()
        if status and not status.startswith("2"):
            return None, "http_not_ok"
    content_type = (http.get_header("Content-Type") if http else None) or record.rec_headers.get_header(
        "Content-Type", ""
    )
    mime = record.rec_headers.get_header("WARC-Identified-Payload-Type") or content_type.split(";")[0]
    mime = mime.strip().lower()
    payload = record.content_stream().read()
    if getattr(record.raw_stream, "limit", 0) > 0:
        return None, "truncated_record"  # fewer bytes than its Content-Length: a cut-off download
    if not payload.strip():
        return None, "empty"
    is_text = rec_type == "conversion"  # WET: already extracted text
    looks_html = mime in HTML_TYPES or (not mime and payload[:1024].lstrip().lower().startswith(_HTML_SNIFF))
    if not (is_text or looks_html):
        return None, "not_html"
    text = decode_payload(payload, content_type)
    if text is None:
        return None, "undecodable"
    headers = record.rec_headers
    url = headers.get_header("WARC-Target-URI") or headers.get_header("uri")
    return {
        "text": text,
        "id": headers.get_header("WARC-Record-ID") or f"{url}#{headers.get_header('WARC-Date')}",
        "url": url,
        "date": headers.get_header("WARC-Date") or headers.get_header("archive-date"),
        FORMAT_KEY: TEXT if is_text else HTML,
    }, None


def decode_payload(payload: bytes, content_type: str = "", min_confidence: float = 0.5) -> str | None:
    """Decode as UTF-8, then the declared charset, then a confident detection; None if all fail.

    UTF-8 goes first: strict UTF-8 almost never accepts bytes in another encoding, while pages that
    declare a legacy charset but are really UTF-8 are common (a GBK decode of them "succeeds" as mojibake).
    """
    declared = []
    m = re.search(r"charset\s*=\s*[\"']?([\w.:-]+)", content_type or "", re.IGNORECASE)
    if m:
        declared.append(m.group(1))
    m = _CHARSET_RE.search(payload[:4096])
    if m:
        declared.append(m.group(1).decode("ascii", "ignore"))
    for charset in ["utf-8", *declared]:
        charset = {"gb2312": "gb18030", "gbk": "gb18030"}.get(
            charset.lower(), charset
        )  # superset, same bytes
        try:
            return payload.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    import cchardet

    guess = cchardet.detect(payload)
    if guess.get("encoding") and (guess.get("confidence") or 0) >= min_confidence:
        try:
            return payload.decode(guess["encoding"])
        except (UnicodeDecodeError, LookupError):
            return None
    return None


class CountingJsonlReader(_CountingReader, JsonlReader):
    """JsonlReader that counts broken lines (`broken_json`) instead of only logging them."""

    name = "🐿 Jsonl (cpt)"

    def read_file(self, filepath: str):
        import orjson

        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            li = 0
            # a JSON string spends at most 6 bytes a character (\uXXXX): a longer line cannot fit the cap,
            # and is skipped a MiB at a time instead of being read whole
            limit = None if self.max_chars is None else 6 * self.max_chars + (1 << 20)
            while True:
                try:
                    line = f.readline() if limit is None else f.readline(limit + 1)
                    if limit is not None and len(line) > limit:
                        while line and not line.endswith(b"\n"):
                            line = f.readline(1 << 20)
                        self.drop("too_large")
                        li += 1
                        continue
                except (EOFError, zlib.error, OSError):
                    self.drop("truncated_file")
                    return
                if not line:
                    return
                try:
                    data = orjson.loads(line)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                except (orjson.JSONDecodeError, ValueError):
                    self.drop("broken_json")
                    li += 1
                    continue
                data.setdefault(FORMAT_KEY, TEXT)
                if (document := self.to_document(data, filepath, li)) is not None:
                    yield document
                li += 1


class CountingTextReader(_CountingReader, JsonlReader):
    """Plain text files: one document a line (`lines`, as Wudao, THUCNews and most Chinese corpora come),
    or a document a block of lines separated by a blank line (`blocks`). Undecodable bytes become U+FFFD
    and each such document is counted (`repaired_utf8`); blank documents are `empty`. A document's id is
    FILE/N, N its place in the file. (JsonlReader for its file handling: sharding, compression, limits.)"""

    name = "📄 Text (cpt)"

    def __init__(self, *args, mode: str = "lines", **kwargs):
        super().__init__(*args, **kwargs)
        if mode not in ("lines", "blocks"):
            raise ValueError(f"read.txt: {mode!r} is not lines or blocks")
        self.mode = mode

    def _documents(self, f):
        """The file's documents as bytes, a line or a block at a time. A document longer than the cap
        allows (4 bytes a character) is `too_large`, never held whole: its bytes past the cap are skipped."""
        limit = None if self.max_chars is None else 4 * self.max_chars + (1 << 20)
        block: list[bytes] = []
        size = 0  # of the block so far; past the limit, its lines are no longer kept
        while True:
            line = f.readline() if limit is None else f.readline(limit + 1)
            long = limit is not None and len(line) > limit
            while long and line and not line.endswith(b"\n"):  # the rest of an over-long line
                line = f.readline(1 << 20)
            if self.mode == "lines":
                if not line:
                    return
                if long:
                    self.drop("too_large")
                elif line.strip():  # a blank line is no document
                    yield line
                continue
            if line.strip():
                size += limit + 1 if long else len(line)
                if limit is None or size <= limit:
                    block.append(line)
                continue
            if size:  # a blank line or the end: the block is done
                if limit is not None and size > limit:
                    self.drop("too_large")
                else:
                    yield b"".join(block)
                block, size = [], 0
            if not line:
                return

    def read_file(self, filepath: str):
        with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
            try:
                for i, raw in enumerate(self._documents(f)):
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        text = raw.decode("utf-8", errors="replace")
                        self.stat_update("repaired_utf8")
                    data = {"text": text.rstrip("\r\n"), FORMAT_KEY: TEXT}
                    if (document := self.to_document(data, filepath, i)) is not None:
                        yield document
            except (EOFError, zlib.error, OSError):
                self.drop("truncated_file")


class CountingParquetReader(_CountingReader, ParquetReader):
    """ParquetReader whose documents are marked as plain text and every row is counted in the funnel.

    Rows with null or blank text are `empty`; a file without a `text` column counts all its rows (from
    the footer) as `no_text_column`; a file that cannot be opened (truncated, not Parquet) is one
    `broken_parquet`, and rows after damage inside a readable file are counted under that reason too.
    """

    name = "📒 Parquet (cpt)"

    def read_file(self, filepath: str):
        # not cpt.shards.read_rows: this opens through datatrove's DataFolder (remote inputs too), counts
        # a text-less file's rows from its footer and the rows lost after damage, instead of raising
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows, seen = None, 0
        try:
            # pre_buffer=False: pyarrow's default reads every row group's columns before the first batch,
            # so memory grew with the file; now it is one row group
            with self.data_folder.open(filepath, "rb") as f, pq.ParquetFile(f, pre_buffer=False) as pqf:
                rows = pqf.metadata.num_rows
                if self.text_key not in pqf.schema_arrow.names:
                    if rows:
                        self.drop("no_text_column", rows)
                        logger.warning(f"{filepath}: no `{self.text_key}` column: its {rows:,} rows skipped")
                    return
                columns = None if self.read_metadata else [self.text_key, self.id_key]
                for batch in pqf.iter_batches(batch_size=self.batch_size, columns=columns):
                    rows_of_batch, bad = batch_rows(batch)
                    if bad:  # kept, with U+FFFD for the bytes that are not UTF-8
                        self.stat_update("repaired_utf8", value=bad)
                    for row in rows_of_batch:
                        document = self.to_document(row, filepath, seen)
                        seen += 1
                        if document is not None:
                            document.metadata.setdefault(FORMAT_KEY, TEXT)
                            yield document
        except (OSError, pa.ArrowException) as e:  # truncated: ArrowInvalid; unreadable: OSError
            self.drop("broken_parquet", max(1, rows - seen) if rows is not None else 1)
            why = (str(e).splitlines() or [type(e).__name__])[0]
            logger.warning(f"{filepath}: not readable as Parquet after {seen:,} rows: {why}")


def list_inputs(input_path: str) -> tuple[str, dict[str, list[str]]]:
    """(folder, {kind: sorted files relative to it}) of the inputs under a folder or glob, kinds
    detected by file name; FileNotFoundError naming the path when there are none."""
    from datatrove.io import get_datafolder

    folder, pattern = split_glob(input_path)
    df = get_datafolder(folder)
    if not df.exists(""):
        raise FileNotFoundError(f"{input_path}: no such file or folder")
    if df.isfile(""):  # one file: read from its folder, by name
        kind = input_kind(folder)
        if kind is None:
            raise FileNotFoundError(
                f"{input_path}: not an input file cpt reads (.warc(.gz), .wet(.gz), .jsonl(.gz|.zst), "
                ".parquet, .txt)"
            )
        parent, name = os.path.split(folder.rstrip("/"))
        return parent or ".", {kind: [name]}
    files = sorted(df.list_files(recursive=True, glob_pattern=pattern))
    by_kind: dict[str, list[str]] = {}
    for f in files:
        if kind := input_kind(f):
            by_kind.setdefault(kind, []).append(f)
    if not by_kind:
        raise FileNotFoundError(
            f"{input_path}: no input files found (looked for .warc(.gz), .wet(.gz), .jsonl(.gz|.zst), .parquet, "
            ".txt)"
        )
    return folder, dict(sorted(by_kind.items()))


def make_readers(
    folder: str,
    by_kind: dict[str, list[str]],
    lists_dir: str | Path,
    limit: int = -1,
    progress: bool = True,
    max_chars: int | None = None,
    txt: str = "lines",
) -> list:
    """One reader per kind of input `list_inputs` found, each sharding the list of its files that
    `write_input_lists` keeps in `lists_dir/<kind>.txt` (written once the run is accepted: a run that is
    refused writes nothing)."""
    # one bar (documents): datatrove's second, of files, redraws over it on a terminal
    common = dict(limit=limit, file_progress=False, doc_progress=progress)
    classes = {"warc": RobustWarcReader, "wet": RobustWarcReader, "jsonl": CountingJsonlReader}
    readers = [
        CountingTextReader(folder, paths_file=str(Path(lists_dir) / f"{kind}.txt"), mode=txt, **common)
        if kind == "txt"
        else classes.get(kind, CountingParquetReader)(
            folder, paths_file=str(Path(lists_dir) / f"{kind}.txt"), **common
        )
        for kind in sorted(by_kind)
    ]
    for reader in readers:
        if not isinstance(reader, RobustWarcReader):  # text records: the cap applies as they are read
            reader.max_chars = max_chars
    return readers


def write_input_lists(by_kind: dict[str, list[str]], lists_dir: str | Path) -> None:
    """`lists_dir/<kind>.txt`: the files of each kind, sorted, that the readers shard among the tasks,
    and the run's record of exactly what it read."""
    for kind, kind_files in sorted(by_kind.items()):
        write_text(Path(lists_dir) / f"{kind}.txt", "".join(f + "\n" for f in kind_files))


def split_glob(input_path: str) -> tuple[str, str | None]:
    """'dir/**/*.warc.gz' -> ('dir', '**/*.warc.gz'); a plain folder -> (folder, None)."""
    parts = Path(input_path).parts
    for i, part in enumerate(parts):
        if any(c in part for c in "*?["):
            return str(Path(*parts[:i])) if i else ".", str(Path(*parts[i:]))
    return input_path, None
