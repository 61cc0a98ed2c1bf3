"""Token shards: datatrove's tokenized format plus a manifest that ties them to their tokenizer.

Each task of `run.py tokenize` writes, through datatrove's DocumentTokenizer, `NNNNN_unshuffled.ds`
(the token ids, uint16 when the vocabulary fits, else uint32), `.ds.index` (uint64 end offset of every
document, EOS included) and `.ds.metadata`. When every task has finished, `tokens.json` lists the
files with their token and document counts, the source name and the SHA-256 of the tokenizer; shards
without it, or read with another tokenizer, are refused.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import numpy as np
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.tokens import DocumentTokenizer
from datatrove.pipeline.tokens.tokenizer import TokenizedFile

from cpt.funnel import add_stats
from cpt.io import JsonFileError, read_json, write_text

MANIFEST = "tokens.json"


class TokenShardError(ValueError):
    """Token shards that are incomplete, damaged, or from another tokenizer."""


def tokenizer_hash(tokenizer: str | Path) -> str:
    """SHA-256 of a tokenizer's tokenizer.json (a folder, or the file itself)."""
    path = Path(tokenizer)
    path = path / "tokenizer.json" if path.is_dir() else path
    if not path.is_file():
        raise TokenShardError(f"{tokenizer}: no tokenizer.json")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(
    folder: str | Path, source: str, tokenizer: str | Path, token_size: int, labels: dict | None = None
) -> dict:
    """Write tokens.json; `labels` ({metadata key: value}) record what a `--split-by` folder holds."""
    folder = Path(folder)
    files = []
    for ds in sorted(folder.glob("*.ds")):
        ends = np.fromfile(f"{ds}.index", dtype=np.uint64)
        tokens = ds.stat().st_size // token_size
        if len(ends) and int(ends[-1]) != tokens:
            raise TokenShardError(f"{ds}: index ends at {int(ends[-1])} but the file holds {tokens} tokens")
        files.append({"path": ds.name, "tokens": tokens, "documents": len(ends)})
    manifest = {
        "source": source,
        "tokenizer_sha256": tokenizer_hash(tokenizer),
        "token_size": token_size,
        "dtype": "uint16" if token_size == 2 else "uint32",
        "files": files,
        "tokens": sum(f["tokens"] for f in files),
        "documents": sum(f["documents"] for f in files),
        "labels": labels or {},
    }
    write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # ASCII-escaped, as before
    return manifest


class TokensManifestStep(PipelineStep):
    """Last stage of `tokenize` (one task, after all tokenizing tasks): writes tokens.json."""

    type = "🔢 - TOKENIZER"
    name = "🧾 token shard manifest"

    def __init__(self, folder: str, source: str, tokenizer: str, token_size: int, labels: dict | None = None):
        super().__init__()
        self.folder, self.source, self.tokenizer, self.token_size = folder, source, tokenizer, token_size
        self.labels = labels

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        manifest = write_manifest(self.folder, self.source, self.tokenizer, self.token_size, self.labels)
        self.stat_update("tokens", value=manifest["tokens"])
        self.stat_update("documents", value=manifest["documents"])
        if data:
            yield from data


ENCODE_CHUNK = 1000  # documents encoded by one call of the tokenizers library
CHUNK_CHARS = 1 << 20  # a chunk ends at 1 Mi characters too: with IN_FLIGHT + 1 chunks of Chinese (1.5
# tokens a character, each token kept as string, offsets and id) 8 Mi would hold gigabytes of encodings
IN_FLIGHT = 2  # chunks handed to the tokenizer ahead of the one whose ids are being collected


def batches(docs, size: int, max_chars: int) -> Iterator[list]:
    """Consecutive lists of at most `size` documents and, unless one document alone is longer, at most
    `max_chars` characters of text (datatrove's `batched` counts documents only)."""
    batch, chars = [], 0
    for doc in docs:
        if batch and (len(batch) == size or chars + len(doc.text) > max_chars):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc.text)
    if batch:
        yield batch


_LOADED: dict[tuple, object] = {}  # the one tokenizer `load_tokenizer` loaded last, until a step takes it


def _file_key(path: str | Path) -> tuple:
    stat = Path(path).stat()
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


def load_tokenizer(path: str | Path):
    """`Tokenizer.from_file`, the object kept for this process's tokenizing step to take over (loading a
    LLaMA-sized tokenizer.json takes a tenth of a second; `run.py tokenize` loads it to check it, then its
    step, in the same process unless it runs on other machines, would load it again). A forked worker
    takes its own copy. Only the last one loaded is kept."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    _LOADED.clear()
    _LOADED[_file_key(path)] = tokenizer
    return tokenizer


class StagedTokenizedFile(TokenizedFile):
    """datatrove's TokenizedFile written under temporary names (`.NAME.<pid>.tmp`, `.tmp.index`,
    `.tmp.metadata`), each renamed to its final name (`NAME`, `NAME.index`, `NAME.metadata`) by `close()`
    once whole, the token file last: a task that fails, is killed or runs out of disk leaves no `.ds`
    under a final name, only temporary files that its rerun removes (the output lock makes every other
    writer of the folder a dead one)."""

    def __init__(self, output_folder, filename: str, **kwargs):
        folder = get_datafolder(output_folder)
        for stale in folder.glob(f".{filename}.*.tmp*"):  # a killed earlier try of this task
            folder.rm_file(stale)
        self.final_name = filename
        super().__init__(folder, f".{filename}.{os.getpid()}.tmp", **kwargs)

    def close(self):
        with self.removed_on_error():  # a full disk fails the flush of what is buffered, or the index
            super().close()
        staged = self.filename
        for suffix in (".index", ".metadata", ""):  # the token file last: it names the shard
            if suffix == "" or self.output_folder.exists(staged + suffix):
                self.output_folder.mv(staged + suffix, self.final_name + suffix)
        self.filename = self.final_name

    @contextlib.contextmanager
    def removed_on_error(self):
        """Within it, an error removes this file's temporary files before it goes on up."""
        with StagedTokenizedFile.all_removed_on_error({None: self}):
            yield

    @staticmethod
    @contextlib.contextmanager
    def all_removed_on_error(files: dict):
        """Within it, an error removes the temporary files of `files`' values (as they are then)."""
        try:
            yield
        except BaseException:
            for file in files.values():
                with contextlib.suppress(OSError):  # a full disk fails the flush of what is buffered
                    file.tokens_file.close()
                with contextlib.suppress(OSError):
                    file.cleanup()
            raise


class FastDocumentTokenizer(DocumentTokenizer):
    """datatrove's DocumentTokenizer with the same files out, its per-document work done per batch."""

    @cached_property
    def tokenizer(self):
        """datatrove's, taking over the one `load_tokenizer` loaded from the same file if there is one."""
        path = self.tokenizer_name_or_path
        try:
            loaded = _LOADED.pop(_file_key(path), None) if path else None
        except OSError:  # not a file: datatrove loads it (or says why not)
            loaded = None
        if loaded is None or self.post_processor:
            return DocumentTokenizer.tokenizer.func(self)
        if self.eos_token:  # as datatrove's: EOS after every document
            from tokenizers.processors import TemplateProcessing

            loaded.post_processor = TemplateProcessing(
                single="$A <EOS>", special_tokens=[("<EOS>", loaded.token_to_id(self.eos_token))], pair=None
            )
        return loaded

    def _new_file(self, folder, filename: str):
        return StagedTokenizedFile(
            folder,
            filename,
            save_index=self.save_index or self.shuffle_documents or self.shuffle_chunk_size,
            save_loss_metadata=False,
            upload_block_size=self.upload_block_size,
            tokenizer_name_or_path=self.tokenizer_name_or_path,
            save_final_metadata=self.save_final_metadata,
            token_size=self.token_size,
        )

    def _write(self, file, flat: np.ndarray, lengths: list[int]) -> None:
        """Documents' ids (EOS included, one after the other in `flat`) into `file` in one piece, instead
        of a `struct.pack` per document."""
        file.write_bytes(flat.tobytes(), np.cumsum(lengths).tolist())
        add_stats(self, ["tokens"], lengths)

    @property
    def _dtype(self) -> np.dtype:
        return np.dtype("<u2" if self.token_size == 2 else "<u4")

    def _ids(self, encodings) -> tuple[np.ndarray, list[int]]:
        """The encodings' ids one after the other, and each one's length. `array.extend` takes each
        encoding's list of ids in C; numpy's `fromiter` over a chain of them was half as fast again."""
        flat, lengths = array.array("H" if self.token_size == 2 else "I"), []
        for encoding in encodings:
            ids = encoding.ids
            lengths.append(len(ids))
            flat.extend(ids)
        return np.frombuffer(flat, dtype=self._dtype), lengths

    @cached_property
    def word_encoder(self):
        """A WordCacheEncoder when the tokenizer has SentencePiece's front end (cpt-tok merge's) and EOS
        is the only thing its post-processor adds, else None (the library encodes every token)."""
        from cpt.tokens.wordcache import WordCacheEncoder

        if self.post_processor or not self.eos_token:
            return None
        return WordCacheEncoder.of(self.tokenizer, self.tokenizer.token_to_id(self.eos_token), self._dtype)

    def _encoded_batches(self, data) -> Iterator[tuple[list, tuple[np.ndarray, list[int]]]]:
        """(documents, (their ids one after the other, each one's length)) a chunk of at most
        `ENCODE_CHUNK` documents and `CHUNK_CHARS` characters at a time, in input order.

        Each chunk is encoded in a worker thread: by the word cache (`cpt.tokens.wordcache`) when the
        tokenizer allows it, else by `encode_batch_fast` (the same ids, without the character offsets
        that only loss masks need), which lets go of the GIL while the library's own threads fill every
        core. Reading the next chunk and turning the last one's encodings into an array (Python work,
        one core) happen in this thread meanwhile, `IN_FLIGHT` chunks behind the tokenizer, so the
        tokenizer never waits for them: done one after the other, they cost a fifth of the time. At
        most `IN_FLIGHT + 1` chunks' documents and encodings exist at once."""
        words = self.word_encoder
        with ThreadPoolExecutor(1) as pool:
            pending: deque = deque()  # (documents, future of their encodings), oldest first
            for chunk in batches(data, ENCODE_CHUNK, CHUNK_CHARS):
                texts = [d.text for d in chunk]
                job = (
                    pool.submit(words.encode, texts)
                    if words
                    else pool.submit(self.tokenizer.encode_batch_fast, texts)
                )
                pending.append((chunk, job))
                if len(pending) > IN_FLIGHT:
                    docs, job = pending.popleft()
                    yield docs, job.result() if words else self._ids(job.result())
            while pending:
                docs, job = pending.popleft()
                yield docs, job.result() if words else self._ids(job.result())

    def write_unshuffled(self, data, filename: str):
        """As datatrove's, faster (`_encoded_batches`, `_write`); batches are written in order, so the files
        do not change. With loss masks it is datatrove's own."""
        if self.save_loss_metadata:
            return super().write_unshuffled(data, filename)
        unshuff = self._new_file(self.output_folder, filename)
        with unshuff.removed_on_error(), self.track_time(unit="batch"):
            for _, (flat, lengths) in self._encoded_batches(data):
                self._write(unshuff, flat, lengths)
        unshuff.close()
        return unshuff


class SplitDocumentTokenizer(FastDocumentTokenizer):
    """`tokenize --split-by KEY`: each task reads its input once, encodes it a batch at a time and writes
    every document's ids to the file of its value's folder (`folders`: value -> folder; documents without
    the key have the value `other`). Each folder gets the files that the value's own run over the same
    input would write (`tests/test_tok_cli.py` compares them): one a task, empty where the task has no
    document of that value. Memory is one batch, whatever the number of values."""

    name = "✍️ tokenize, split by metadata"

    def __init__(self, key: str, folders: dict[str, str], tokenizer_json: str, eos_token: str):
        from datatrove.io import get_datafolder

        if not folders:
            raise ValueError("no --split-by values")
        super().__init__(
            next(iter(folders.values())), tokenizer_json, eos_token=eos_token, shuffle_documents=False
        )
        self.key = key
        self.folders = {value: get_datafolder(folder) for value, folder in folders.items()}

    def value_of(self, doc) -> str:
        from cpt.steps.write import OTHER

        value = doc.metadata.get(self.key)
        return str(value) if value is not None else OTHER

    def run(self, data, rank: int = 0, world_size: int = 1):
        from datatrove.pipeline.tokens.tokenizer import get_output_filename

        filename = get_output_filename(self.save_filename, rank, "unshuffled")
        files: dict[str, StagedTokenizedFile] = {}
        with StagedTokenizedFile.all_removed_on_error(files), self.track_time(unit="batch"):
            for docs, (flat, lengths) in self._encoded_batches(data):
                ends = np.cumsum(lengths).tolist()
                groups: dict[str, list[int]] = {}  # value -> its documents' positions in the batch
                for i, doc in enumerate(docs):
                    groups.setdefault(self.value_of(doc), []).append(i)
                for value, members in groups.items():
                    if value not in files:
                        if value not in self.folders:  # the input changed since the run was prepared
                            raise TokenShardError(
                                f"a document has {self.key}={value!r}, which the input held no document of "
                                "when this run was prepared; tokenize into a new --output folder"
                            )
                        files[value] = self._new_file(self.folders[value], filename)
                    if len(members) == len(docs):
                        self._write(files[value], flat, lengths)
                    else:
                        ids = np.concatenate([flat[ends[i] - lengths[i] : ends[i]] for i in members])
                        self._write(files[value], ids, [lengths[i] for i in members])
        for value, folder in self.folders.items():  # as the value's own run: an empty file where none
            if value not in files:
                files[value] = self._new_file(folder, filename)
            files[value].close()


def document_tokenizer(output_folder: str, tokenizer_json: str, eos_token: str) -> FastDocumentTokenizer:
    """The tokenizing step of `tokenize`: EOS after every document, no shuffling (the mixer shuffles)."""
    return FastDocumentTokenizer(output_folder, tokenizer_json, eos_token=eos_token, shuffle_documents=False)


# what to do about a folder whose files do not match its tokens.json: a rerun of the same command into
# it skips the tasks it finished, so it keeps their damaged files
REDO = "re-run `run.py tokenize` into a new --output folder (a rerun into this one keeps its finished files)"
RESUME = "run the same `run.py tokenize` command again to finish it"
TOKEN_SIZES = {"uint16": 2, "uint32": 4}


def read_manifest(folder: str | Path) -> dict:
    """A folder's tokens.json, checked for the keys and types its readers rely on (not yet its files:
    see `check_files`); a TokenShardError names the file and the fix."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise TokenShardError(
            f"{folder}: no {MANIFEST}: its tokenize run has not finished ({RESUME}) or this is not "
            "a token-shard folder"
        )
    try:
        manifest = read_json(path)
    except OSError as e:
        raise TokenShardError(f"{path}: cannot be read ({e.strerror})") from None
    except JsonFileError as e:
        raise TokenShardError(f"{e}; {REDO}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise TokenShardError(f"{path}: {problem}; {REDO}")
    return manifest


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_problem(m) -> str | None:
    if not isinstance(m, dict):
        return f"a JSON {type(m).__name__}, not the object tokenize writes"
    missing = [k for k in ("tokenizer_sha256", "dtype", "files") if k not in m]
    if missing:
        return f"lacks {', '.join(missing)}"
    if not isinstance(m["tokenizer_sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", m["tokenizer_sha256"]):
        return f"tokenizer_sha256 {m['tokenizer_sha256']!r} is not a SHA-256"
    if m["dtype"] not in TOKEN_SIZES:
        return f"dtype {m['dtype']!r} is not one of {', '.join(TOKEN_SIZES)}"
    if "token_size" in m and m["token_size"] != TOKEN_SIZES[m["dtype"]]:
        return f"token_size {m['token_size']!r} does not match dtype {m['dtype']}"
    if not isinstance(m.get("labels", {}), dict):
        return "labels is not a mapping"
    if not isinstance(m["files"], list):
        return "files is not a list"
    seen = set()
    for i, f in enumerate(m["files"]):
        if not isinstance(f, dict) or not {"path", "tokens", "documents"} <= f.keys():
            return f"files[{i}] is not {{path, tokens, documents}}"
        name = f["path"]
        # a plain file name: the shards of a folder are in it, and nothing it lists may lead out of it
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".ds") or name == ".ds":
            return f"files[{i}].path {name!r} is not the name of a .ds file in this folder"
        if name in seen:
            return f"files[{i}].path {name!r} is listed twice"
        seen.add(name)
        for key in ("tokens", "documents"):
            if not _count(f[key]):
                return f"files[{i}].{key} {f[key]!r} is not a count"
    for key in ("tokens", "documents"):
        if key in m and m[key] != sum(f[key] for f in m["files"]):
            return f"{key} {m[key]!r} is not the sum over its files ({sum(f[key] for f in m['files']):,})"
    return None


def check_files(folder: str | Path, manifest: dict) -> Iterator[tuple[dict, bytes]]:
    """Each file entry of a (read_manifest-checked) tokens.json with its document index, once its shard
    is shown to hold what the entry counts: the shard's size is tokens x token size, the index holds
    one end offset per document, never decreasing, the last one the shard's end; and no shard lies in
    the folder unlisted. Reads the indexes (8 bytes a document), never the tokens."""
    folder = Path(folder)
    listed = {f["path"] for f in manifest["files"]}
    unlisted = sorted(p.name for p in folder.glob("*.ds") if p.name not in listed)
    if unlisted:
        raise TokenShardError(
            f"{folder / unlisted[0]}: a shard that {MANIFEST} does not list (written by another run?); {REDO}"
        )
    size = TOKEN_SIZES[manifest["dtype"]]
    for f in manifest["files"]:
        ds = folder / f["path"]
        index = Path(f"{ds}.index")
        tokens, documents = f["tokens"], f["documents"]
        for path in (ds, index):
            if not path.is_file():
                raise TokenShardError(f"{path}: listed in {MANIFEST} but missing; {REDO}")
        if ds.stat().st_size != tokens * size:
            raise TokenShardError(
                f"{ds}: {ds.stat().st_size:,} bytes, but {MANIFEST} counts {tokens:,} tokens of {size} bytes "
                f"({tokens * size:,}): cut short or rewritten since tokenize; {REDO}"
            )
        try:
            raw = index.read_bytes()
        except OSError as e:
            raise TokenShardError(f"{index}: cannot be read ({e.strerror})") from None
        if len(raw) != 8 * documents:
            raise TokenShardError(
                f"{index}: {len(raw):,} bytes, but {MANIFEST} counts {documents:,} documents of 8 bytes "
                f"({8 * documents:,}): cut short or rewritten since tokenize; {REDO}"
            )
        ends = np.frombuffer(raw, dtype="<u8")
        last = int(ends[-1]) if documents else 0
        if last != tokens:
            raise TokenShardError(
                f"{index}: its documents end at token {last:,}, but {ds.name} holds {tokens:,}; {REDO}"
            )
        back = np.flatnonzero(ends[1:] < ends[:-1])
        if len(back):
            raise TokenShardError(
                f"{index}: document {int(back[0]) + 1} ends before document {int(back[0])} (a damaged "
                f"index); {REDO}"
            )
        yield f, raw


class TokenShards:
    """Random access to the documents of a token-shard folder, memory-mapped (nothing is read up front)."""

    def __init__(self, folder: str | Path, tokenizer: str | Path | None = None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        if tokenizer is not None and tokenizer_hash(tokenizer) != self.manifest["tokenizer_sha256"]:
            raise TokenShardError(
                f"{self.folder}: written with another tokenizer (sha256 {self.manifest['tokenizer_sha256'][:12]}…), "
                f"not {tokenizer}"
            )
        dtype = np.dtype(self.manifest["dtype"])
        self._tokens, self._ends = [], []
        for f, index in check_files(self.folder, self.manifest):
            # a task that got no document leaves an empty file, which cannot be mapped
            path = self.folder / f["path"]
            self._tokens.append(np.memmap(path, dtype=dtype, mode="r") if f["tokens"] else np.empty(0, dtype))
            self._ends.append(np.frombuffer(index, dtype="<u8"))
        self._first = np.cumsum([0] + [len(e) for e in self._ends])

    def __len__(self) -> int:
        return int(self._first[-1])

    def document(self, i: int) -> np.ndarray:
        """The token ids of document `i` (EOS included)."""
        if not 0 <= i < len(self):
            raise IndexError(i)
        f = int(np.searchsorted(self._first, i, side="right") - 1)
        j = i - int(self._first[f])
        start = int(self._ends[f][j - 1]) if j else 0
        return np.asarray(self._tokens[f][start : int(self._ends[f][j])])
