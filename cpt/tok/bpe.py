"""Byte-level BPE (Llama 3, Qwen, GPT-2 and their kin): train new merges with the base's own front end
and append them to the base, so that every text the base already encoded keeps its ids.

A byte-level BPE encodes a pre-token by applying its merges in priority order until none applies. New
merges ranked after all of the base's can only fire once the base's merges are exhausted, that is on
the base's own result; a new merge that makes a token holding a non-ASCII byte can never fire on ASCII
text. So with the default selection (new tokens hold a non-ASCII byte and no ASCII but a leading
space, as `cpt.tok.merge` does for SentencePiece) English and code encode exactly as before.

Hugging Face `tokenizers` trains the BPE (with the base's normalizer and pre-tokenizer, so the merges it
learns are merges the base's pre-tokenisation can reach) but has no API to add merges to a trained
model (transformers #28259, tokenizers #839 ask for one): the merged tokenizer.json is written here.
A trained token is not added with the merge that made it in the new model: the base may split its
bytes differently (its merges run first), so each new token gets the merge of the two symbols the
merged tokenizer (base plus the new merges so far) leaves in its bytes, and is skipped when more are
left. Every new token is then reachable, and none is an added token (those break spacing, decoding
and speed: transformers #28384, tokenizers #1392, #848).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cpt.io import LOCK_NAME, OutputError, check_replaceable, write_json, written_dir
from cpt.tok.merge import TOKENIZER_FOLDER, TokenizerError

# the files of a Hugging Face tokenizer folder that the merge keeps as they are; vocab.json and
# merges.txt (slow tokenizers' copies of the model) are not copied: they would describe the base
KEPT_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def _byte_decoder() -> dict[str, int]:
    """GPT-2's map from the printable characters byte-level BPE writes back to the bytes they stand for."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTES = _byte_decoder()


def token_bytes(token: str) -> bytes:
    return bytes(BYTES[c] for c in token)


def _walk(node) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def tokenizer_json_path(path: str | Path) -> Path:
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def is_byte_level(path: str | Path) -> bool:
    """A tokenizer.json (or a folder holding one and no SentencePiece model) with a byte-level BPE."""
    path = Path(path)
    if path.is_dir() and (path / "tokenizer.model").is_file():
        return False
    file = tokenizer_json_path(path)
    if file.suffix != ".json" or not file.is_file():
        return False
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return _kind(data) == "byte-level"


def _kind(data: dict) -> str:
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type', 'tokenizer')} model"
    if not any(n.get("type") == "ByteLevel" for n in _walk(data.get("pre_tokenizer"))):
        return (
            "a BPE without a byte-level pre-tokenizer (a SentencePiece conversion? give its tokenizer.model)"
        )
    return "byte-level"


def load_byte_level(path: str | Path, role: str) -> dict:
    """The parsed tokenizer.json of a byte-level BPE, or a one-line TokenizerError naming the file."""
    file = tokenizer_json_path(path)
    if not file.is_file():
        raise TokenizerError(
            f"{path}: no tokenizer.json ({role} takes a tokenizer folder or its tokenizer.json)"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{file}: not a tokenizer.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{file}: not a tokenizer.json (no model)")
    kind = _kind(data)
    if kind != "byte-level":
        raise TokenizerError(f"{file}: {kind}, not a byte-level BPE")
    return data


def _pairs(merges: list) -> list[tuple[str, str]]:
    """Merges as pairs: tokenizers writes `["a", "b"]` since 0.20 and `"a b"` before."""
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]  # type: ignore[misc]


def bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges by priority (the lowest rank first, the leftmost pair on a tie) until none applies."""
    symbols = list(word)
    while len(symbols) > 1:
        best, at = None, -1
        for i in range(len(symbols) - 1):
            rank = ranks.get((symbols[i], symbols[i + 1]))
            if rank is not None and (best is None or rank < best):
                best, at = rank, i
        if best is None:
            break
        symbols[at : at + 2] = [symbols[at] + symbols[at + 1]]
    return symbols


def addable(token: str, pieces: str) -> bool:
    """Whether a new token may be added: under `non-ascii`, it holds a non-ASCII byte and no ASCII byte
    but a leading space, so it can never fire on ASCII text (or join a Chinese word to an English one)."""
    data = token_bytes(token)
    if pieces == "all":
        return True
    return any(b >= 0x80 for b in data) and all(b >= 0x80 for b in data.removeprefix(b" "))


@dataclass
class ByteMergeResult:
    base_pieces: int  # the base's vocabulary, special tokens included
    added: int
    skipped_ascii: int
    total: int
    unreachable: int = 0  # trained tokens the merged tokenizer could not reach with one new merge


def merge_byte_level(
    base: dict, add: dict, pieces: str = "non-ascii", limit: int | None = None
) -> tuple[dict, ByteMergeResult]:
    """The merged tokenizer.json (a new dict; `base` is not changed) and what was added.

    The new tokens are taken in the order the new model learnt them (its most frequent merges first),
    at most `limit` of them; ids follow the last id in use (added tokens included)."""
    merged = json.loads(json.dumps(base))
    model = merged["model"]
    vocab: dict[str, int] = model["vocab"]
    string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
    ranks = {pair: i for i, pair in enumerate(_pairs(model["merges"]))}
    # tokenizers gives added tokens that the model lacks the ids after the model's size, whatever ids the
    # file writes: once new tokens follow them, the special tokens would move. In the model's vocabulary
    # too (BPE never makes them: no merge does), they keep their ids
    for special in merged.get("added_tokens", []):
        vocab.setdefault(special["content"], special["id"])
    taken = set(vocab)
    next_id = 1 + max(vocab.values())
    if sorted(vocab.values()) != list(range(next_id)):
        raise TokenizerError("the base's ids are not contiguous from 0 (model and added tokens together)")
    base_pieces = next_id
    added = skipped = unreachable = 0
    for a, b in _pairs(add["model"]["merges"]):
        if limit is not None and added >= limit:
            break
        token = a + b
        if token in taken:
            continue
        if not addable(token, pieces):
            skipped += 1
            continue
        parts = bpe(list(token), ranks)
        if len(parts) != 2:
            unreachable += 1
            continue
        ranks[(parts[0], parts[1])] = len(ranks)
        model["merges"].append(" ".join(parts) if string_merges else list(parts))
        vocab[token] = next_id
        taken.add(token)
        next_id += 1
        added += 1
    return merged, ByteMergeResult(base_pieces, added, skipped, next_id, unreachable)


def check_extends(base: dict, merged: dict) -> None:
    """Load both with `tokenizers` and check what the merge promises: every base token (special ones
    included) keeps its id, and every new token is what the merged tokenizer makes of its own bytes."""
    from tokenizers import Tokenizer

    old, new = Tokenizer.from_str(json.dumps(base)), Tokenizer.from_str(json.dumps(merged))
    old_vocab, new_vocab = old.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    for token, i in old_vocab.items():
        if new_vocab.get(token) != i:
            raise TokenizerError(f"merge failed: base token {token!r} has id {new_vocab.get(token)}, not {i}")
    for token, i in new_vocab.items():
        if token not in old_vocab:
            ids = [t.id for t in new.model.tokenize(token)]
            if ids != [i]:
                raise TokenizerError(f"merge failed: new token {token!r} ({i}) is tokenized as {ids}")


def merge(
    base: str | Path, add: str | Path, output: str | Path, pieces: str = "non-ascii", limit: int | None = None
) -> ByteMergeResult:
    """`cpt-tok merge` for a byte-level base: write OUTPUT/tokenizer.json and the base's other files."""
    base_data, add_data = load_byte_level(base, "--base"), load_byte_level(add, "--add")
    if limit is None:  # the count `cpt-tok train --new-tokens` asked for
        info = tokenizer_json_path(add).parent / "train.json"
        if info.is_file():
            try:
                limit = json.loads(info.read_text(encoding="utf-8")).get("new_tokens")
            except ValueError:
                raise TokenizerError(f"{info}: not JSON") from None
    for role, source in (("--base", base), ("--add", add)):
        if Path(output).resolve() == tokenizer_json_path(source).parent.resolve():
            raise OutputError(
                f"{output}: is the {role} tokenizer's folder; write the merge to another --output"
            )
    check_replaceable(output, TOKENIZER_FOLDER, "cpt-tok merge")  # before the work
    merged, result = merge_byte_level(base_data, add_data, pieces, limit)
    check_extends(base_data, merged)
    folder = tokenizer_json_path(base).parent
    with written_dir(output, TOKENIZER_FOLDER, "cpt-tok merge") as tmp:
        (tmp / "tokenizer.json").write_text(
            json.dumps(merged, ensure_ascii=False, indent=2), encoding="utf-8"
        )
        for name in KEPT_FILES:
            if (folder / name).is_file():
                (tmp / name).write_bytes((folder / name).read_bytes())
    return result


def train(
    lines: list[str],
    base: str | Path,
    new_tokens: int,
    output: str | Path,
    info: dict,
    min_frequency: int = 2,
) -> Path:
    """Train a byte-level BPE on `lines` with the base's normalizer and pre-tokenizer, large enough that
    `merge` finds `new_tokens` tokens the base lacks; write OUTPUT/tokenizer.json and train.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    base_data = load_byte_level(base, "--base")
    if new_tokens < 1:
        raise TokenizerError(f"--new-tokens {new_tokens}: must be at least 1")
    check_replaceable(output, _trained_folder, "cpt-tok train")  # before the work
    base_tok = Tokenizer.from_str(json.dumps(base_data))
    vocab_size = 256 + 2 * new_tokens
    while True:
        tok = Tokenizer(models.BPE())
        tok.normalizer, tok.pre_tokenizer = base_tok.normalizer, base_tok.pre_tokenizer
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(lines, trainer)
        trained = json.loads(tok.to_str())
        _, found = merge_byte_level(base_data, trained, info.get("pieces", "non-ascii"), new_tokens)
        exhausted = tok.get_vocab_size() < vocab_size  # the corpus has no more pairs seen min_frequency times
        if found.added >= new_tokens or exhausted:
            break
        vocab_size *= 2
    with written_dir(output, _trained_folder, "cpt-tok train") as tmp:
        (tmp / "tokenizer.json").write_text(json.dumps(trained, ensure_ascii=False), encoding="utf-8")
        write_json(
            tmp / "train.json",
            {
                **info,
                "model_type": "byte-bpe",
                "base": str(base),
                "new_tokens": min(new_tokens, found.added),
                "new_tokens_asked": new_tokens,
                "vocab_size": tok.get_vocab_size(),
                "min_frequency": min_frequency,
            },
        )
    return Path(output) / "tokenizer.json"


def _trained_folder(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {"tokenizer.json", "train.json", LOCK_NAME}
