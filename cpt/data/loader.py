"""The streaming loader: a stage manifest in, packed and document-masked batches out.

Every source is a stream of its documents in a seeded order (a fresh order each epoch), read from
shards (read with pread; the small document index is mapped). Sources take turns as `Interleave`
schedules them, so replay is spread evenly through the stage. A `concat` source fills each of its
sequences to `seq_len`, cutting documents at the sequence boundary. A `same_type` source (instruction
data, Ziya2 stage 2) packs whole documents only, with data of its own `type` only: when its next
document does not fit the room left, the room is filled first-fit with whole documents of the other
`same_type` sources of that type (each one's current document, in manifest order, taken while one
fits), then padded; only a document longer than a sequence is split.

Each sequence carries `input_ids`, `labels` (-100 at the first token of every document piece and on
padding, so no token is trained to predict another document) and `position_ids` restarting at 0 at
every piece (what varlen attention needs to keep documents apart; `cu_seqlens` derives from them),
and `source`, the manifest index of the source of every token (padding: the source the sequence was
scheduled to), for the loss per source.

Global sequence k of the stage goes to data-parallel rank k % world; on a rank, batch b goes to loader
worker b % workers, and torch's DataLoader returns workers' batches round-robin, so the rank sees the
same batches whatever the worker count. Each batch carries the loader state after its row of ranks
(per source: sequences scheduled, epoch, document, token offset, tokens read, however the source's
documents were taken), so resuming is a seek in source units.
"""

from __future__ import annotations

import copy
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cpt.data.order import DocumentOrder, Interleave, order_key
from cpt.manifest import ManifestError, read_stage_manifest

IGNORE_INDEX = -100  # the label torch's cross-entropy and Hugging Face models skip
_CHUNK = 8192  # documents looked up at a time

Piece = tuple[int, int, int, int]  # (source, file, first token, end) of one document piece


def same_type_partners(manifest: dict) -> list[list[int]]:
    """For each source, the other `same_type` sources of its `type`, in manifest order, whose whole
    documents may fill the room its own leave (none for a `concat` source or one alone in its type)."""
    sources = manifest["sources"]
    group = [s["type"] if s["packing"] == "same_type" else None for s in sources]
    return [
        [j for j, other in enumerate(group) if g is not None and other == g and j != i]
        for i, g in enumerate(group)
    ]


def sequences_per_source(manifest: dict, total: int | None = None) -> list[int]:
    """How many packed sequences each source gives the stage: `total` (by default the stage's budget over
    `seq_len`), split in proportion to the sources' tokens by largest remainder (so the parts add up to the
    whole). Under a sequence-length ramp every source's sequences are spread evenly over the stage, so each
    one meets every length in the same proportion and its share of tokens stays its share of sequences."""
    if total is None:
        total = round(manifest["tokens"] / manifest["seq_len"])
    used = [s["tokens_used"] for s in manifest["sources"]]
    exact = [total * u / max(sum(used), 1) for u in used]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(used)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def initial_state(manifest: dict) -> dict:
    return {
        "manifest_hash": manifest["manifest_hash"],
        "sequences": 0,
        "sources": [
            {"name": s["name"], "sequences": 0, "epoch": 0, "document": 0, "offset": 0, "tokens": 0}
            for s in manifest["sources"]
        ],
    }


def _random_access_map(path: str, dtype: np.dtype) -> np.ndarray:
    """A read-only map of a whole file as an array, advised for random access (no readahead)."""
    with open(path, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapped, dtype=dtype)


class SourceStream:
    """The documents of one source in seeded order, epoch after epoch, and the packing of them."""

    def __init__(self, source: dict, seed: int, cursor: dict, index: int = 0):
        self.name, self.seed, self.index = source["name"], seed, index
        self.same_type = source["packing"] == "same_type"
        # a long-context source reads only its long documents: the others are passed over in the order, so
        # the cursor (a position in the order) still resumes exactly
        self.min_tokens = int(source.get("min_tokens", 0))
        if self.min_tokens and source.get("documents_qualifying") == 0:
            raise ManifestError(f"source {self.name}: no document has min_tokens {self.min_tokens}")
        files = [f for f in source["files"] if f["documents"] > 0]
        if not files:
            raise ManifestError(f"source {self.name}: no documents")
        # Tokens are read with pread, not through a memory map: documents come in random order from
        # the whole corpus, and every fault on a map brings in (and keeps resident) the pages around
        # it, so a mapped loader's RSS grows toward the corpus size. The small document index is mapped
        # with readahead off.
        self.dtype = np.dtype(files[0]["dtype"])
        self.tokens = [open(f["path"], "rb", buffering=0) for f in files]  # noqa: SIM115 (held open)
        self.ends = [_random_access_map(f"{f['path']}.index", np.uint64) for f in files]
        self.first = np.cumsum([0] + [f["documents"] for f in files])
        self.documents = int(self.first[-1])
        self.epoch, self.document = cursor["epoch"], cursor["document"]
        self.offset, self.read = cursor["offset"], cursor["tokens"]
        self._order = DocumentOrder(self.documents, order_key(seed, self.name, self.epoch))
        self._chunk_start, self._chunk = -1, ([], [], [])

    def cursor(self) -> dict:
        return {"epoch": self.epoch, "document": self.document, "offset": self.offset, "tokens": self.read}

    def _load_chunk(self) -> None:
        positions = np.arange(self.document, min(self.document + _CHUNK, self.documents))
        docs = self._order(positions)
        file_of = np.searchsorted(self.first, docs, side="right") - 1
        local = docs - self.first[file_of]
        starts, ends = np.empty(len(docs), np.int64), np.empty(len(docs), np.int64)
        for f in np.unique(file_of):
            sel = file_of == f
            j = local[sel]
            ends[sel] = self.ends[f][j]
            starts[sel] = np.where(j > 0, self.ends[f][np.maximum(j - 1, 0)], 0)
        self._chunk_start = self.document
        self._chunk = (file_of.tolist(), starts.tolist(), ends.tolist())

    def _current(self) -> tuple[int, int, int]:
        """(file, first token, end) of the unread part of the current document (with `min_tokens`, the
        next document at least that long)."""
        while True:
            i = self.document - self._chunk_start
            if self._chunk_start < 0 or not 0 <= i < len(self._chunk[0]):
                self._load_chunk()
                i = 0
            f, start, end = self._chunk[0][i], self._chunk[1][i], self._chunk[2][i]
            if self.offset or end - start >= self.min_tokens:
                return f, start + self.offset, end
            self._advance()

    def _advance(self) -> None:
        self.document, self.offset = self.document + 1, 0
        if self.document == self.documents:
            self.epoch, self.document = self.epoch + 1, 0
            self._order = DocumentOrder(self.documents, order_key(self.seed, self.name, self.epoch))
            self._chunk_start = -1

    def next_sequence(self, seq_len: int) -> list[Piece]:
        """The pieces of the next sequence scheduled to this source, of `seq_len` tokens; padding (or, for
        a same-type source, documents of its partners) fills what they leave."""
        pieces, room = [], seq_len
        while room:
            f, start, end = self._current()
            length = end - start
            if length <= room:
                pieces.append((self.index, f, start, end))
                room -= length
                self._advance()
            elif self.same_type and room < seq_len:
                break  # the document does not fit: pad, it starts the next sequence
            else:  # cut: concat packing always, same-type only for a document longer than a sequence
                pieces.append((self.index, f, start, start + room))
                self.offset += room
                room = 0
        self.read += seq_len - room
        return pieces

    def next_whole_document(self, room: int) -> Piece | None:
        """The unread part of the current document, taken when it fits in `room` (else None)."""
        f, start, end = self._current()
        if end - start > room:
            return None
        self._advance()
        self.read += end - start
        return self.index, f, start, end

    def read_tokens(self, f: int, start: int, end: int) -> np.ndarray:
        size = self.dtype.itemsize
        return np.frombuffer(
            os.pread(self.tokens[f].fileno(), (end - start) * size, start * size), self.dtype
        )


def first_fit(streams: list[SourceStream], partners: list[int], room: int) -> list[Piece]:
    """Whole documents of the partner streams for the room a same-type sequence leaves: in turns over
    the partners in manifest order, each one's current document while one fits."""
    pieces, trying = [], partners
    while room and trying:
        fitted = []
        for s in trying:
            piece = streams[s].next_whole_document(room)
            if piece is not None:  # a partner whose document did not fit never fits the smaller room
                pieces.append(piece)
                room -= piece[3] - piece[2]
                fitted.append(s)
        trying = fitted
    return pieces


def fill_sequence(
    streams: list[SourceStream],
    pieces: list[Piece],
    ids: np.ndarray,
    labels: np.ndarray,
    positions: np.ndarray,
    source: np.ndarray,
    pad_id: int,
    arange: np.ndarray,
) -> None:
    """Write one sequence made of these pieces into rows of a batch: ids, labels, position_ids and
    the source of every token (padding is the first piece's: the source the sequence was scheduled to)."""
    t = 0
    for s, f, start, end in pieces:
        n = end - start
        ids[t : t + n] = streams[s].read_tokens(f, start, end)
        positions[t : t + n] = arange[:n]
        source[t : t + n] = s
        t += n
    ids[t:] = pad_id
    positions[t:] = arange[: len(ids) - t]  # padding is a piece of its own, out of the loss
    source[t:] = pieces[0][0]
    labels[:] = ids
    labels[positions == 0] = IGNORE_INDEX  # never predict a piece's first token from another piece
    labels[t:] = IGNORE_INDEX


def sequence_length_at(lengths: list[tuple[int, int]], sequence: int) -> int:
    """The packing length of the stage's global sequence `sequence`, under `lengths`: consecutive
    (sequences, seq_len) runs."""
    for count, seq_len in lengths:
        if sequence < count:
            return seq_len
        sequence -= count
    return lengths[-1][1]


class PackedSequences:
    """The batches of one data-parallel rank, from a manifest and a loader state.

    `lengths` (a sequence-length ramp): consecutive runs of (sequences, seq_len) that replace the stage's
    round(tokens / seq_len) sequences of `seq_len`; each run must hold whole rows of micro-batches of all
    ranks, so a batch never mixes lengths. The state is in source units either way: a resume at any point
    continues with the length of the sequence it stopped before."""

    def __init__(
        self,
        manifest: dict,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 1,
        pad_id: int = 0,
        state: dict | None = None,
        lengths: list[tuple[int, int]] | None = None,
    ):
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not within a world of {world}")
        self.manifest, self.rank, self.world = manifest, rank, world
        self.batch_size, self.pad_id = batch_size, pad_id
        self.state = state or initial_state(manifest)
        if self.state["manifest_hash"] != manifest["manifest_hash"]:
            raise ManifestError(
                f"the loader state was saved on manifest {self.state['manifest_hash'][:16]}, "
                f"not {manifest['manifest_hash'][:16]}: resuming would read other data"
            )
        self.seq_len = manifest["seq_len"]
        self.lengths = [(int(n), int(length)) for n, length in lengths] if lengths else None
        if self.lengths:
            for n, length in self.lengths:
                if n % (world * batch_size) or not 0 < length <= self.seq_len:
                    raise ValueError(
                        f"sequence lengths {self.lengths}: each run needs whole rows of {world} x "
                        f"{batch_size} sequences and a length within (0, {self.seq_len}]"
                    )
        self.total = sum(n for n, _ in self.lengths) if self.lengths else sum(sequences_per_source(manifest))
        # every rank takes the same number of sequences (ranks step together); the stage's last
        # `total % world` sequences, fewer than one per rank, are left out
        self.per_rank = (self.total - self.state["sequences"]) // world

    def __len__(self) -> int:
        """Batches left on this rank."""
        return -(-self.per_rank // self.batch_size)

    def batches(self, worker: int = 0, workers: int = 1) -> Iterator[dict]:
        """This worker's batches (every `workers`-th, from `worker`), each with the state after it."""
        state, m = self.state, self.manifest
        streams = [
            SourceStream(s, m["seed"], c, index)
            for index, (s, c) in enumerate(zip(m["sources"], state["sources"], strict=True))
        ]
        partners = same_type_partners(m)
        schedule = Interleave(sequences_per_source(m, self.total), [c["sequences"] for c in state["sources"]])
        arange = np.arange(self.seq_len, dtype=np.int64)
        start, bsz = state["sequences"], self.batch_size
        seq_len = self.seq_len
        for i in range(self.per_rank):
            b, row = divmod(i, bsz)
            mine = b % workers == worker
            if row == 0 and self.lengths:  # a batch's rows share their run of the ramp
                seq_len = sequence_length_at(self.lengths, start + i * self.world)
            if mine and row == 0:
                rows = min(bsz, self.per_rank - b * bsz)
                ids = np.empty((rows, seq_len), dtype=np.int64)
                labels, positions, source = np.empty_like(ids), np.empty_like(ids), np.empty_like(ids)
            for r in range(self.world):
                s = schedule.next()
                pieces = streams[s].next_sequence(seq_len)
                room = seq_len - sum(end - first for _, _, first, end in pieces)
                if room and partners[s]:
                    pieces += first_fit(streams, partners[s], room)
                if mine and r == self.rank:
                    fill_sequence(
                        streams,
                        pieces,
                        ids[row],
                        labels[row],
                        positions[row],
                        source[row],
                        self.pad_id,
                        arange,
                    )
            if mine and row == rows - 1:
                yield {
                    "input_ids": ids,
                    "labels": labels,
                    "position_ids": positions,
                    "source": source,
                    "state": self._state_after(streams, schedule, start + (i + 1) * self.world),
                }

    def _state_after(self, streams: list[SourceStream], schedule: Interleave, done: int) -> dict:
        return {
            "manifest_hash": self.manifest["manifest_hash"],
            "sequences": done,
            "sources": [
                {"name": st.name, "sequences": n, **st.cursor()}
                for st, n in zip(streams, schedule.done, strict=True)
            ],
        }


def heldout_batches(folder: str | Path, seq_len: int, sequences: int, batch_size: int, pad_id: int = 0):
    """Packed, document-masked batches of a held-out token-shard folder, always the same ones (for
    perplexity): its documents in a fixed seeded order, concatenated to `seq_len`."""
    from cpt.tokens import check_files, read_manifest

    folder = Path(folder)
    meta = read_manifest(folder)  # a damaged or unfinished held-out set is a TokenShardError naming the file
    for _ in check_files(folder, meta):
        pass
    source = {
        "name": f"heldout:{folder.name}",
        "packing": "concat",
        "files": [{**f, "path": str(folder / f["path"]), "dtype": meta["dtype"]} for f in meta["files"]],
    }
    stream = SourceStream(source, 0, {"epoch": 0, "document": 0, "offset": 0, "tokens": 0})
    sequences = min(sequences, max(meta["tokens"] // seq_len, 1))  # no repeats: at most one pass
    arange = np.arange(seq_len, dtype=np.int64)
    for first in range(0, sequences, batch_size):
        rows = min(batch_size, sequences - first)
        ids = np.empty((rows, seq_len), dtype=np.int64)
        labels, positions, source = np.empty_like(ids), np.empty_like(ids), np.empty_like(ids)
        for row in range(rows):
            pieces = stream.next_sequence(seq_len)
            fill_sequence(
                [stream], pieces, ids[row], labels[row], positions[row], source[row], pad_id, arange
            )
        yield {
            "input_ids": torch.from_numpy(ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(positions),
        }


def cu_seqlens(position_ids: np.ndarray) -> np.ndarray:
    """Cumulative piece lengths of a flattened batch (for varlen attention kernels), from position_ids."""
    flat = np.asarray(position_ids).reshape(-1)
    starts = np.flatnonzero(flat == 0)
    return np.append(starts, len(flat)).astype(np.int32)


class PackedLoader:
    """torch DataLoader over a manifest for one rank, with `state_dict()`/`load_state_dict()`.

    The state is taken from the last batch handed to the caller (not the last one a worker made), so
    batches prefetched but not trained on are not counted as seen.
    """

    def __init__(
        self,
        manifest: str | Path | dict,
        rank: int = 0,
        world: int = 1,
        batch_size: int = 1,
        workers: int = 0,
        pad_id: int = 0,
        lengths: list[tuple[int, int]] | None = None,
    ):
        self.manifest = manifest if isinstance(manifest, dict) else read_stage_manifest(manifest)
        self.rank, self.world, self.batch_size = rank, world, batch_size
        self.workers, self.pad_id, self.lengths = workers, pad_id, lengths
        self._state = initial_state(self.manifest)

    def _sequences(self, state: dict | None = None) -> PackedSequences:
        return PackedSequences(
            self.manifest,
            self.rank,
            self.world,
            self.batch_size,
            self.pad_id,
            state or self._state,
            self.lengths,
        )

    def __len__(self) -> int:
        return len(self._sequences())

    def __iter__(self) -> Iterator[dict]:
        loader = DataLoader(
            _TorchPacked(self._sequences()),
            batch_size=None,  # batches are made in the workers, whole, in order
            collate_fn=_as_is,  # they are tensors already; the state stays a plain dict
            num_workers=self.workers,
            persistent_workers=False,
            # without its own generator the DataLoader draws its workers' base seed from torch's global
            # RNG, even with no workers: a resumed run (whose RNG state is restored before this) would
            # then draw dropout one number behind the uninterrupted run
            generator=torch.Generator().manual_seed(0),
        )
        for batch in loader:
            self._state = batch.pop("state")
            yield batch

    def state_dict(self) -> dict:
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state (refused when it was saved on another manifest)."""
        self._sequences(state)
        self._state = copy.deepcopy(state)


def _as_is(batch: dict) -> dict:
    return batch


class _TorchPacked(IterableDataset):
    def __init__(self, sequences: PackedSequences):
        super().__init__()
        self.sequences = sequences

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        for batch in self.sequences.batches(worker, workers):
            yield {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in batch.items()}
