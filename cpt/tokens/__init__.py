"""Token shards: datatrove's tokenized format plus a manifest that ties them to their tokenizer.

Each task of `run.py tokenize` writes, through datatrove's DocumentTokenizer, `NNNNN_unshuffled.ds`
(the token ids, uint16 when the vocabulary fits, else uint32), `.ds.index` (uint64 end offset of every
document, EOS included) and `.ds.metadata`. When every task has finished, `tokens.json` lists the
files with their token and document counts, the source name and the SHA-256 of the tokenizer; shards
without it, or read with another tokenizer, are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

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
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MANIFEST)
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


class TokenShards:
    """Random access to the documents of a token-shard folder, memory-mapped (nothing is read up front)."""

    def __init__(self, folder: str | Path, tokenizer: str | Path | None = None):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise TokenShardError(
                f"{self.folder}: no {MANIFEST}; the tokenize run is incomplete or this is not one"
            )
        self.manifest = json.loads(path.read_text(encoding="utf-8"))
        if tokenizer is not None and tokenizer_hash(tokenizer) != self.manifest["tokenizer_sha256"]:
            raise TokenShardError(
                f"{self.folder}: written with another tokenizer (sha256 {self.manifest['tokenizer_sha256'][:12]}…), "
                f"not {tokenizer}"
            )
        dtype = np.dtype(self.manifest["dtype"])
        self._tokens = [  # a task that got no document leaves an empty file, which cannot be mapped
            np.memmap(self.folder / f["path"], dtype=dtype, mode="r") if f["tokens"] else np.empty(0, dtype)
            for f in self.manifest["files"]
        ]
        self._ends = [
            np.fromfile(self.folder / f"{f['path']}.index", dtype=np.uint64) for f in self.manifest["files"]
        ]
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
