"""Resize a model's embeddings for a merged tokenizer and initialise the new rows (Ziya2).

Each new token's input row (and output row, when the head is not tied) is the mean of the base rows of
the tokens the base tokenizer splits it into, by token id: a SentencePiece piece's text, a byte-level
token's bytes (through the base's own BPE). With a byte-fallback base most Chinese pieces are averages
of byte-token rows. Rows of the base vocabulary are not touched. A model with spare rows beyond its
tokenizer (Qwen pads to a multiple) keeps its size and the new ids' rows are written in place; others
grow to a multiple of 64 (tensor-core friendly), the rows beyond the new vocabulary getting the mean of
all base rows.

The output folder is written whole (a temporary folder, renamed) and replaces only an earlier output
of this command (it holds `cpt_init_embeddings.json`): never the base model or the tokenizer.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cpt.io import CustomCodeError, OutputError, check_replaceable, holds, refuse_custom_code, written_dir
from cpt.tok.bpe import KEPT_FILES
from cpt.tok.merge import TokenizerError

PAD_MULTIPLE = 64
MARKER = "cpt_init_embeddings.json"
INITIALISED = holds(MARKER)  # an --output is replaced only when it is an earlier init-embeddings output


@dataclass
class InitResult:
    base_vocab: int
    merged_vocab: int
    padded_vocab: int
    initialised: int
    tied: bool


def piece_text(piece: str) -> str:
    return piece.replace("▁", " ")


def base_ids_for(base_sp, piece: str) -> list[int]:
    """The base pieces of a new piece's text, without the lone dummy prefix sentencepiece puts in front."""
    ids = base_sp.encode(piece_text(piece))
    if len(ids) > 1 and base_sp.id_to_piece(ids[0]) == "▁" and not piece.startswith("▁"):
        ids = ids[1:]
    return ids


def _sentencepiece_parts(base_tokenizer, tokenizer) -> tuple[int, int, dict[int, list[int]]]:
    from cpt.tok.report import load_sentencepiece

    base_sp, merged_sp = load_sentencepiece(base_tokenizer), load_sentencepiece(tokenizer)
    base_n, merged_n = base_sp.get_piece_size(), merged_sp.get_piece_size()
    for i in range(base_n):
        if merged_sp.id_to_piece(i) != base_sp.id_to_piece(i):
            raise TokenizerError(
                f"{tokenizer}: piece {i} differs from the base's; it is not a merge of {base_tokenizer}"
            )
    return (
        base_n,
        merged_n,
        {i: base_ids_for(base_sp, merged_sp.id_to_piece(i)) for i in range(base_n, merged_n)},
    )


def _byte_level_parts(base_tokenizer, tokenizer) -> tuple[int, int, dict[int, list[int]]]:
    """By token id: the base's BPE applied to a new token's bytes (a token may hold part of a character,
    so its bytes, not a decoded text, are what the base splits)."""
    from tokenizers import Tokenizer

    from cpt.tok.bpe import load_byte_level

    base = Tokenizer.from_str(json.dumps(load_byte_level(base_tokenizer, "--base-tokenizer")))
    merged = Tokenizer.from_str(json.dumps(load_byte_level(tokenizer, "--tokenizer")))
    old, new = base.get_vocab(with_added_tokens=True), merged.get_vocab(with_added_tokens=True)
    for token, i in old.items():
        if new.get(token) != i:
            raise TokenizerError(
                f"{tokenizer}: token {token!r} has another id than in the base; it is not a merge of "
                f"{base_tokenizer}"
            )
    base_n, merged_n = 1 + max(old.values()), 1 + max(new.values())
    parts = {i: [t.id for t in base.model.tokenize(token)] for token, i in new.items() if token not in old}
    if len(parts) != merged_n - base_n or min(parts, default=base_n) < base_n:
        raise TokenizerError(f"{tokenizer}: the new tokens' ids do not follow the base's ({base_n:,} on)")
    return base_n, merged_n, parts


def init_embeddings(
    model_dir: str | Path, base_tokenizer: str | Path, tokenizer: str | Path, output: str | Path
):
    import torch
    from transformers import AutoModelForCausalLM

    from cpt.tok.bpe import is_byte_level

    model_dir, output = Path(model_dir), Path(output)
    if not (model_dir / "config.json").is_file():
        raise TokenizerError(
            f"{model_dir}: not a Hugging Face model folder (no config.json); --model takes the base model's folder"
        )
    inputs = {model_dir.resolve(), Path(tokenizer).resolve(), Path(base_tokenizer).resolve()}
    if output.resolve() in inputs:
        raise OutputError(f"{output}: is one of the inputs (--model or a tokenizer); choose another --output")
    check_replaceable(output, INITIALISED, "cpt-tok init-embeddings")  # before the work
    byte_level = is_byte_level(base_tokenizer)
    if byte_level != is_byte_level(tokenizer):
        raise TokenizerError(f"{tokenizer}: not of the base's kind ({base_tokenizer})")
    parts_of = _byte_level_parts if byte_level else _sentencepiece_parts
    base_n, merged_n, parts = parts_of(base_tokenizer, tokenizer)
    try:
        refuse_custom_code(model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False)
    except CustomCodeError as e:
        raise TokenizerError(str(e)) from None
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TokenizerError(f"{model_dir}: the model does not load ({first})") from None
    old_in = model.get_input_embeddings().weight.detach().clone()
    rows = old_in.shape[0]
    if rows < base_n:
        raise TokenizerError(f"{model_dir}: {rows} embedding rows, fewer than the base's {base_n} tokens")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    old_out = None if tied else model.get_output_embeddings().weight.detach().clone()

    # a model whose embedding already has room (Qwen pads its rows to a multiple) keeps its size: the new
    # ids fall inside the spare rows, which are written; others grow, padded to a multiple of 64
    if merged_n > rows:
        model.resize_token_embeddings(merged_n, pad_to_multiple_of=PAD_MULTIPLE, mean_resizing=False)
    new_in = model.get_input_embeddings().weight
    new_out = None if tied else model.get_output_embeddings().weight
    padded = new_in.shape[0]
    fill = list(range(base_n))  # rows added beyond the merged vocabulary: the mean of every base row
    written = sorted(parts) + list(range(max(rows, merged_n), padded))
    with torch.no_grad():
        for i in written:
            ids = parts.get(i, fill)
            new_in[i] = old_in[ids].mean(dim=0)
            if new_out is not None:
                new_out[i] = old_out[ids].mean(dim=0)
    model.config.vocab_size = padded

    result = InitResult(base_n, merged_n, padded, len(written), tied)
    with written_dir(output, INITIALISED, "cpt-tok init-embeddings") as tmp:
        model.save_pretrained(str(tmp))
        src = Path(tokenizer) if Path(tokenizer).is_dir() else Path(tokenizer).parent
        for name in ("tokenizer.model", "tokenizer.json", *KEPT_FILES):
            if (src / name).is_file():
                shutil.copy(src / name, tmp / name)
        record = {"model": str(model_dir), "base_tokenizer": str(base_tokenizer), "tokenizer": str(tokenizer)}
        (tmp / MARKER).write_text(json.dumps({**record, **asdict(result)}, indent=2) + "\n")
    return result
