"""Plan a stage before reading any token: resolve sources to shards, split the budget, write the manifest.

Shares: the replay share of the budget goes to the replay sources (split by their weights, equal when
none are given); the rest goes to fixed-`tokens` sources first, then to weighted sources in proportion
to their normalised weights. A source used for more tokens than it holds repeats (epochs > 1); more
than its `max_epochs` is refused. A source with `min_tokens` holds only its documents at least that
long (counted from the shards' document indexes): those are what it has to give, for its epochs and its
refusals. The manifest's hash covers everything in it, so it names the data exactly; planning twice gives
the same hash. Keys of optional features (`min_tokens`, `anneal_tokens`) are written only when they are
used, so a stage file that does not use them keeps the manifest, and the hash, it always had.
"""

from __future__ import annotations

import glob
import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cpt.manifest import manifest_hash
from cpt.mix.stage import Source, Stage
from cpt.tokens import MANIFEST, RESUME, TOKEN_SIZES, TokenShardError, check_files, read_manifest

EPOCH_WARNING = 4.0  # Muennighoff et al. 2023: repeated data stops paying off after about 4 epochs
REPLAY_WARNING = 0.05  # Ibrahim et al. 2024: replay of 5% or more is what prevents forgetting
INDEX_CHUNK = 1 << 20  # document ends read at a time for `min_tokens` (8 MiB of uint64, and as much again)


class MixError(ValueError):
    """A stage that cannot be planned; the message names the file and the source."""


@dataclass
class PlannedSource:
    name: str
    role: str  # "source" or "replay"
    packing: str
    type: str | None
    files: list[dict]
    tokens_available: int
    tokens_used: int = 0
    share: float = 0.0
    epochs: float = 0.0
    warnings: list[str] = field(default_factory=list)
    where: str = ""  # "stage.yaml: sources[0] (name)", for its refusals
    min_tokens: int = 0
    documents_qualifying: int = 0  # with min_tokens: its documents at least that long, and their tokens
    tokens_qualifying: int = 0


@dataclass
class Qualifying:
    """What a source's shards hold of documents at least `min_tokens` long."""

    documents: int = 0
    tokens: int = 0
    longest: int = 0  # the longest document's tokens, for the refusal when none qualifies

    def add(self, index: bytes, min_tokens: int) -> None:
        """Count one shard from its document index (uint64 end offsets): lengths are differences of
        consecutive ends, taken a chunk at a time so that a shard of many documents costs bounded
        memory beyond its index."""
        ends = np.frombuffer(index, dtype="<u8")
        previous = np.uint64(0)
        for start in range(0, len(ends), INDEX_CHUNK):
            part = ends[start : start + INDEX_CHUNK]
            lengths = np.diff(part, prepend=previous)
            previous = part[-1]
            keep = lengths >= min_tokens
            self.documents += int(np.count_nonzero(keep))
            self.tokens += int(lengths.sum(where=keep))
            self.longest = max(self.longest, int(lengths.max()))


def _file_digest(index: bytes, size: int) -> str:
    """Content hash of a shard: its document index (small) and its size, so planning stays cheap."""
    h = hashlib.sha256(index)
    h.update(str(size).encode())
    return h.hexdigest()


def _unfinished(folder: Path) -> bool:
    """A folder a tokenize run is still writing (or that died): shards, but no tokens.json yet."""
    return not (folder / MANIFEST).is_file() and any(folder.glob("*.ds"))


def _split_folders(folder: Path) -> list[Path]:
    """The token folders (finished or not) right under `folder` when it has no tokens.json itself: what
    `tokenize` writes for an input of several languages, or with --split-by."""
    if (folder / MANIFEST).is_file() or _unfinished(folder):
        return []
    return sorted(c for c in folder.iterdir() if c.is_dir() and ((c / MANIFEST).is_file() or _unfinished(c)))


def _folders(source: Source, where: str) -> list[Path]:
    """The token-shard folders a source names: its path (or what its glob matches) and, with `where`,
    the labelled folders under them that match."""
    pattern = any(c in source.path for c in "*?[")
    folders = sorted(Path(p) for p in glob.glob(source.path)) if pattern else [Path(source.path)]
    folders = [f for f in folders if f.is_dir()]
    if not folders:
        what = (
            "no folder matches it"
            if pattern
            else "a file, not a folder"
            if Path(source.path).exists()
            else "no such folder"
        )
        raise MixError(
            f"{where}: {source.path}: {what}, so no token shards; point path at the --output of `run.py tokenize`"
        )
    condition = source.condition()
    if condition is not None:  # the labelled folders under path (`tokenize --split-by`) that match
        key, allowed = condition
        below = [
            c
            for f in folders
            for c in ([f] if (f / MANIFEST).is_file() else sorted(f.iterdir()))
            if c.is_dir()
        ]
        folders, found = [], set()
        for f in below:
            if _unfinished(f):
                raise MixError(f"{where}: {f}: no {MANIFEST}: its tokenize run has not finished; {RESUME}")
            if (f / MANIFEST).is_file():
                value = str(_read(f, where).get("labels", {}).get(key))
                found.add(value)
                if value in allowed:
                    folders.append(f)
        if not folders:
            seen = f" (found {key}: {', '.join(sorted(found))})" if found - {"None"} else ""
            raise MixError(f"{where}: {source.path}: no token shards labelled {source.where}{seen}")
    else:  # a folder of a split tokenize run (by language, or --split-by): all of its token folders
        folders = [c for f in folders for c in _split_folders(f) or [f]]
    for f in folders:
        if _unfinished(f):  # never planned without: its data would be silently missing from the stage
            raise MixError(f"{where}: {f}: no {MANIFEST}: its tokenize run has not finished; {RESUME}")
    folders = [f for f in folders if (f / MANIFEST).is_file()]
    if not folders:
        raise MixError(
            f"{where}: {source.path}: no token shards (a folder with {MANIFEST}, from `run.py tokenize`)"
        )
    return folders


def _read(folder: Path, where: str) -> dict:
    try:
        return read_manifest(folder)
    except TokenShardError as e:
        raise MixError(f"{where}: {e}") from None


def resolve(source: Source, where: str) -> tuple[list[dict], str, Qualifying | None]:
    """Shard files of a source, their tokenizer hash and, when the source sets `min_tokens`, what they
    hold of documents that long (from the indexes `check_files` has read anyway). Every shard is checked
    against its folder's tokens.json (sizes, index; see `cpt.tokens.check_files`): the counts written
    into the manifest are the ones the loader finds on disk."""
    files, tokenizers = [], {}
    qualifying = Qualifying() if source.min_tokens else None
    for folder in _folders(source, where):
        manifest = _read(folder, where)
        tokenizers.setdefault(manifest["tokenizer_sha256"], folder)
        size = TOKEN_SIZES[manifest["dtype"]]
        try:
            for entry, index in check_files(folder, manifest):
                files.append(
                    {
                        "path": str((folder / entry["path"]).resolve()),
                        "tokens": entry["tokens"],
                        "documents": entry["documents"],
                        "dtype": manifest["dtype"],
                        "sha256": _file_digest(index, entry["tokens"] * size),
                    }
                )
                if qualifying is not None:
                    qualifying.add(index, source.min_tokens)
        except TokenShardError as e:
            raise MixError(f"{where}: {e}") from None
    if len(tokenizers) > 1:
        detail = "; ".join(f"{f}: {t[:12]}…" for t, f in tokenizers.items())
        raise MixError(
            f"{where}: {source.path}: shards from {len(tokenizers)} different tokenizers ({detail})"
        )
    if not sum(f["tokens"] for f in files):
        raise MixError(
            f"{where}: {source.path}: its token shards hold no tokens (tokenize had no text to read); "
            "give it data or drop the source"
        )
    if qualifying is not None and not qualifying.documents:
        documents = sum(f["documents"] for f in files)
        raise MixError(
            f"{where}: min_tokens {source.min_tokens:,}: none of its {documents:,} documents is that long "
            f"(the longest has {qualifying.longest:,} tokens); lower min_tokens or point path at longer "
            "documents"
        )
    return files, next(iter(tokenizers)), qualifying


def plan(stage: Stage, stage_file: str = "stage") -> dict:
    """The manifest of a stage (a dict; `manifest_hash` identifies it)."""
    planned: list[PlannedSource] = []
    tokenizers: dict[str, str] = {}
    for role, sources in (("source", stage.sources), ("replay", stage.replay.sources)):
        for i, s in enumerate(sources):
            where = f"{stage_file}: {'sources' if role == 'source' else 'replay.sources'}[{i}] ({s.name})"
            files, tok, qualifying = resolve(s, where)
            tokenizers[where] = tok
            p = PlannedSource(s.name, role, s.packing, s.type, files, sum(f["tokens"] for f in files))
            p.where = where
            if qualifying is not None:  # only its long documents are read: they are what it has
                p.min_tokens = s.min_tokens
                p.documents_qualifying, p.tokens_qualifying = qualifying.documents, qualifying.tokens
                p.tokens_available = qualifying.tokens
            planned.append(p)
    if len(set(tokenizers.values())) > 1:
        detail = "; ".join(f"{w}: {t[:12]}…" for w, t in tokenizers.items())
        raise MixError(f"{stage_file}: sources come from different tokenizers ({detail})")

    by_name = {(p.role, p.name): p for p in planned}
    replay_budget = round(stage.tokens * stage.replay.share)
    main_budget = stage.tokens - replay_budget
    fixed = {s.name: s.tokens for s in stage.sources if s.tokens is not None}
    if sum(fixed.values()) > main_budget:
        raise MixError(
            f"{stage_file}: fixed source tokens ({sum(fixed.values()):,}) exceed the budget ({main_budget:,})"
        )
    weighted = [s for s in stage.sources if s.weight is not None]
    left = main_budget - sum(fixed.values())
    total_weight = sum(s.weight for s in weighted) or 1.0
    for s in stage.sources:
        p = by_name[("source", s.name)]
        p.tokens_used = fixed[s.name] if s.name in fixed else round(left * s.weight / total_weight)
    replay_weights = [r.weight or 1.0 for r in stage.replay.sources]
    for r, w in zip(stage.replay.sources, replay_weights, strict=True):
        by_name[("replay", r.name)].tokens_used = round(replay_budget * w / sum(replay_weights))

    max_epochs = {("source", s.name): s.max_epochs for s in stage.sources} | {
        ("replay", r.name): r.max_epochs for r in stage.replay.sources
    }
    for p in planned:
        p.share = p.tokens_used / stage.tokens
        p.epochs = p.tokens_used / max(p.tokens_available, 1)
        limit = max_epochs[(p.role, p.name)]
        if p.epochs > limit and p.min_tokens:
            raise MixError(
                f"{p.where}: min_tokens {p.min_tokens:,}: its {p.documents_qualifying:,} documents that long "
                f"hold {p.tokens_qualifying:,} tokens, but its {p.tokens_used:,} need "
                f"{math.ceil(p.tokens_used / limit):,} within its max_epochs {limit} ({p.epochs:.1f} epochs): "
                "lower min_tokens, its weight or the budget, or add long documents"
            )
        if p.epochs > limit:
            raise MixError(
                f"{stage_file}: {p.name} would be read {p.epochs:.1f} times ({p.tokens_used:,} tokens of "
                f"{p.tokens_available:,}), over its max_epochs {limit}: lower its weight or the budget, or add data"
            )
        if p.epochs > EPOCH_WARNING:
            p.warnings.append(
                f"{p.name} repeats {p.epochs:.1f} epochs (> {EPOCH_WARNING:g}: little gain past that)"
            )
    warnings = [w for p in planned for w in p.warnings]
    if stage.replay.share < REPLAY_WARNING:
        warnings.append(
            f"replay share {stage.replay.share:.0%} is below {REPLAY_WARNING:.0%}: expect forgetting"
        )

    manifest = {
        "stage": stage.name,
        "seq_len": stage.seq_len,
        "tokens": stage.tokens,
        # the trainer's LR decays to zero over these last tokens of the stage
        **({"anneal_tokens": stage.anneal_tokens} if stage.anneal_tokens else {}),
        "seed": stage.seed,
        "tokenizer_sha256": next(iter(tokenizers.values())),
        "replay": {"share": stage.replay.share, "sources": [r.name for r in stage.replay.sources]},
        "sources": [
            {
                "name": p.name,
                "role": p.role,
                "packing": p.packing,
                "type": p.type,
                "tokens_available": p.tokens_available,
                "tokens_used": p.tokens_used,
                "share": round(p.share, 6),
                "epochs": round(p.epochs, 6),
                # the loader skips its documents shorter than min_tokens; tokens_available counts the rest
                **(
                    {
                        "min_tokens": p.min_tokens,
                        "documents_qualifying": p.documents_qualifying,
                        "tokens_qualifying": p.tokens_qualifying,
                    }
                    if p.min_tokens
                    else {}
                ),
                "files": p.files,
            }
            for p in planned
        ],
        "warnings": warnings,
    }
    manifest["manifest_hash"] = manifest_hash(manifest)
    return manifest


def table(manifest: dict) -> str:
    lines = [f"{'source':<24} {'role':<7} {'available':>14} {'used':>14} {'share':>7} {'epochs':>7}"]
    for s in manifest["sources"]:
        lines.append(
            f"{s['name']:<24} {s['role']:<7} {s['tokens_available']:>14,} {s['tokens_used']:>14,} "
            f"{s['share']:>7.1%} {s['epochs']:>7.2f}"
        )
    for s in manifest["sources"]:
        if s.get("min_tokens"):
            documents = sum(f["documents"] for f in s["files"])
            tokens = sum(f["tokens"] for f in s["files"])
            lines.append(
                f"{s['name']}: min_tokens {s['min_tokens']:,}: {s['documents_qualifying']:,} of {documents:,} "
                f"documents qualify, {s['tokens_qualifying']:,} of {tokens:,} tokens (its available)"
            )
    anneal = manifest.get("anneal_tokens")
    lines.append(
        f"stage {manifest['stage']}: {manifest['tokens']:,} tokens, seq_len {manifest['seq_len']}, "
        + (f"LR annealed to 0 over its last {anneal:,} tokens, " if anneal else "")
        + f"manifest {manifest['manifest_hash'][:16]}"
    )
    lines += [f"warning: {w}" for w in manifest["warnings"]]
    return "\n".join(lines)
