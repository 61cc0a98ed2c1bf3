"""Merge SentencePiece models: the base keeps every piece, id and score; the pieces of `--add` it lacks
are appended after it (Chinese-LLaMA's merge).

New pieces are scored below every base piece, so the base's BPE merges keep their priority. By default
only pieces without ASCII characters are added, so any ASCII text (English, code) encodes exactly as it
did with the base; `all` adds every missing piece, as Chinese-LLaMA did (the real LLaMA + Chinese-LLaMA
models then give 49,953 pieces), at the cost of changing the encoding of some English words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cpt.io import OutputError, check_replaceable, holds_only, written_dir

# what a merge writes: an --output that holds anything else (a model's weights, a trained tokenizer's
# train.json, a corpus) is not replaced
TOKENIZER_FOLDER = holds_only(
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
NORMAL = 1  # sentencepiece ModelProto.SentencePiece.Type.NORMAL


class TokenizerError(ValueError):
    """A tokenizer file or folder is missing or not what it should be."""


@dataclass
class MergeResult:
    base_pieces: int
    added: int
    skipped_ascii: int
    total: int


def load_model_proto(path: str | Path):
    """A SentencePiece ModelProto from a `.model` file or a folder holding `tokenizer.model`."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.model"
    if not path.is_file():
        raise TokenizerError(
            f"{path}: no SentencePiece model (expected a .model file or a folder with tokenizer.model)"
        )
    proto = pb.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    if not proto.pieces:
        raise TokenizerError(f"{path}: not a SentencePiece model (no pieces)")
    return proto


def merge_protos(base, add, pieces: Literal["non-ascii", "all"] = "non-ascii"):
    """The merged ModelProto and what was added."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    merged = pb.ModelProto()
    merged.CopyFrom(base)
    have = {p.piece for p in base.pieces}
    # below the lowest ordinary score (LLaMA parks a few pieces at -1e9; float32 must keep steps of 1)
    floor = min((p.score for p in base.pieces if p.score > -1e6), default=0.0)
    added = skipped = 0
    for p in add.pieces:
        if p.type != NORMAL or p.piece in have:
            continue
        if pieces == "non-ascii" and any(c.isascii() for c in p.piece.replace("▁", "")):
            skipped += 1
            continue
        new = merged.pieces.add()
        new.piece, new.score, new.type = p.piece, floor - 1 - added, NORMAL
        have.add(p.piece)
        added += 1
    return merged, MergeResult(len(base.pieces), added, skipped, len(merged.pieces))


# SentencePiece's own front end (cpt.tokens.wordcache, where tokenize reads it): a "▁" always in front
# (add_dummy_prefix), spaces as "▁", words split before each "▁" (split_by_whitespace). transformers 5's
# LlamaTokenizer forces a Metaspace that skips the prefix when a text starts with a space, so " said" lost
# its space on decode; a plain tokenizers backend with these steps encodes like sentencepiece and decodes
# every text back exactly.


def save_tokenizer(proto, output: str | Path) -> None:
    """Write `tokenizer.model` plus the Hugging Face files `AutoTokenizer.from_pretrained` needs.

    LlamaTokenizer converts the SentencePiece model (vocabulary, merges, byte fallback); its
    tokenizer.json then gets sentencepiece's front end (above) and is loaded as a plain fast tokenizer.
    `save_pretrained` does not copy the .model file, so that is written by hand. Everything goes to a
    temporary folder renamed at the end.
    """
    import json

    from transformers import LlamaTokenizer

    from cpt.tokens.wordcache import SENTENCEPIECE_NORMALIZER, SENTENCEPIECE_PRE_TOKENIZER

    with written_dir(output, TOKENIZER_FOLDER, "cpt-tok merge") as tmp:
        (tmp / "tokenizer.model").write_bytes(proto.SerializeToString())
        LlamaTokenizer.from_pretrained(str(tmp)).save_pretrained(str(tmp))
        tokenizer_json = json.loads((tmp / "tokenizer.json").read_text(encoding="utf-8"))
        tokenizer_json["normalizer"] = SENTENCEPIECE_NORMALIZER
        tokenizer_json["pre_tokenizer"] = SENTENCEPIECE_PRE_TOKENIZER
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False), encoding="utf-8")
        config = json.loads((tmp / "tokenizer_config.json").read_text(encoding="utf-8"))
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (tmp / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8"
        )


def merge(base: str | Path, add: str | Path, output: str | Path, pieces: str = "non-ascii") -> MergeResult:
    for role, source in (("--base", base), ("--add", add)):
        folder = Path(source).resolve()
        if Path(output).resolve() == (folder.parent if folder.is_file() else folder):
            raise OutputError(
                f"{output}: is the {role} tokenizer's folder; write the merge to another --output"
            )
    check_replaceable(output, TOKENIZER_FOLDER, "cpt-tok merge")  # before the work
    merged, result = merge_protos(load_model_proto(base), load_model_proto(add), pieces)  # type: ignore[arg-type]
    save_tokenizer(merged, output)
    return result
