"""`cpt-tok`: train, merge and compare tokenizers for vocabulary extension.

cpt-tok train  --input PARQUET_DIR_OR_TXT --vocab-size N --output DIR [--model-type bpe|unigram] [--set k=v]
cpt-tok train  --input PARQUET_DIR_OR_TXT --model-type byte-bpe --base BASE --new-tokens N --output DIR
cpt-tok merge  --base BASE --add DIR --output DIR [--pieces non-ascii|all] [--new-tokens N]
cpt-tok report --tokenizer A --tokenizer B [...] --input PARQUET_DIR_OR_TXT
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from cpt.config import ConfigError, apply_overrides
from cpt.io import OutputError, exit_on_disk_fault, output_lock, write_json
from cpt.tok.merge import TokenizerError


def _say_repaired(folder) -> None:
    """A warning line when the corpus held text of invalid UTF-8 (counted in train.json)."""
    repaired = json.loads((folder / "train.json").read_text(encoding="utf-8")).get("repaired_utf8", 0)
    if repaired:
        print(
            f"warning: {repaired:,} texts of invalid UTF-8 in the corpus were read with U+FFFD for the bad "
            "bytes (train.json: repaired_utf8)",
            file=sys.stderr,
        )


def _options(items: list[str]) -> dict:
    """`--set key=value` pairs passed to SentencePiece's trainer, values parsed as YAML (as every `--set`)."""
    try:
        options = apply_overrides({}, items, "--set")
    except ConfigError as e:
        raise TokenizerError(str(e)) from None
    nested = [k for k, v in options.items() if isinstance(v, dict)]
    if nested:  # `a.b=1` (or a mapping value): SentencePiece's options are flat
        raise TokenizerError(
            f"--set {nested[0]}: SentencePiece trainer options take plain values, not sections"
        )
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cpt-tok", description="Extend a base tokenizer for a new language."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train a SentencePiece model or a byte-level BPE on Parquet shards or text files"
    )
    t.add_argument(
        "--input", required=True, help="a clean/dedup output folder, Parquet shards, or text files"
    )
    t.add_argument("--vocab-size", type=int, help="pieces in the new SentencePiece model (bpe, unigram)")
    t.add_argument(
        "--output", required=True, help="folder for tokenizer.model (or tokenizer.json) and train.json"
    )
    t.add_argument(
        "--model-type",
        choices=["bpe", "unigram", "byte-bpe"],
        default="bpe",
        help="bpe (default, as LLaMA 1/2), unigram: SentencePiece; byte-bpe: a byte-level BPE for a "
        "tokenizer.json base (Llama 3, Qwen), trained with the base's own pre-tokenizer",
    )
    t.add_argument("--base", help="byte-bpe: the base tokenizer (a folder with tokenizer.json, or the file)")
    t.add_argument(
        "--new-tokens", type=int, help="byte-bpe: how many tokens the base lacks to learn (merge adds these)"
    )
    t.add_argument("--max-lines", type=int, default=2_000_000, help="lines sampled to train on (default 2M)")
    t.add_argument("--seed", type=int, default=0, help="sampling seed")
    t.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any SentencePiece trainer option, e.g. --set character_coverage=1.0 (repeatable); "
        "byte-bpe takes min_frequency (default 2)",
    )
    # the old spelling, kept working for one release
    t.add_argument("--option", dest="options", action="append", help=argparse.SUPPRESS)

    m = sub.add_parser(
        "merge", help="add the pieces a base tokenizer lacks; write SentencePiece and HF files"
    )
    m.add_argument(
        "--base",
        required=True,
        help="base tokenizer: a SentencePiece .model or a folder holding tokenizer.model, or a byte-level "
        "BPE tokenizer.json (or its folder: Llama 3, Qwen), whose new tokens and merges go after its own",
    )
    m.add_argument("--add", required=True, help="the tokenizer whose missing pieces are added (from `train`)")
    m.add_argument(
        "--output", required=True, help="folder for tokenizer.model, tokenizer.json, tokenizer_config.json"
    )
    m.add_argument(
        "--pieces",
        choices=["non-ascii", "all"],
        default="non-ascii",
        help="non-ascii (default): ASCII text keeps its base encoding; all: Chinese-LLaMA's union",
    )
    m.add_argument(
        "--new-tokens",
        type=int,
        help="byte-level: add at most this many, most frequent first (default: the count train was given)",
    )

    e = sub.add_parser(
        "init-embeddings", help="resize a model for the merged tokenizer; new rows = mean of base rows"
    )
    e.add_argument("--model", required=True, help="Hugging Face model folder (the base model)")
    e.add_argument("--base-tokenizer", required=True, help="the base tokenizer (.model or folder)")
    e.add_argument("--tokenizer", required=True, help="the merged tokenizer folder (from `merge`)")
    e.add_argument(
        "--output",
        required=True,
        help="folder for the resized model and the merged tokenizer (an existing one is replaced only when "
        "it is an earlier init-embeddings output)",
    )

    r = sub.add_parser("report", help="tokens per character and bytes per token, per language, side by side")
    r.add_argument(
        "--tokenizer", action="append", required=True, help="a tokenizer (repeat; the first is the reference)"
    )
    r.add_argument(
        "--input",
        action="append",
        required=True,
        metavar="[LANG=]PATH",
        help="Parquet shards with `lang` (clean/dedup output) or text files, one document a line, whose "
        "language is found by language ID; `zh=news.txt` names it (repeat for each input)",
    )
    r.add_argument("--max-docs", type=int, default=10_000, help="documents read (default 10,000)")
    r.add_argument("--json", help="also write the figures here")

    args = parser.parse_args(argv)
    held = contextlib.ExitStack()
    try:
        if getattr(args, "output", None):  # one writer per output folder, for the whole command
            held.enter_context(output_lock(args.output, f"cpt-tok {args.command}"))
        if args.command == "train" and args.model_type == "byte-bpe":
            from cpt.tok.train import train_byte_bpe

            if args.base is None or args.new_tokens is None:
                raise TokenizerError(
                    "--model-type byte-bpe needs --base (the tokenizer it extends) and --new-tokens"
                )
            if args.vocab_size is not None:
                raise TokenizerError("--vocab-size is for SentencePiece; byte-bpe takes --new-tokens")
            path = train_byte_bpe(
                args.input,
                args.output,
                args.base,
                args.new_tokens,
                args.max_lines,
                args.seed,
                _options(args.options),
            )
            found = json.loads((path.parent / "train.json").read_text(encoding="utf-8"))["new_tokens"]
            short = (
                f" (the corpus gave only {found:,} of the {args.new_tokens:,} asked)"
                if found < args.new_tokens
                else ""
            )
            print(f"wrote {path}: {found:,} tokens the base lacks{short}")
            _say_repaired(path.parent)
        elif args.command == "train":
            from cpt.tok.train import train

            if args.vocab_size is None:
                raise TokenizerError(f"--model-type {args.model_type} needs --vocab-size")
            path = train(
                args.input,
                args.output,
                args.vocab_size,
                args.model_type,
                args.max_lines,
                args.seed,
                _options(args.options),
            )
            print(f"wrote {path}")
            _say_repaired(path.parent)
        elif args.command == "merge":
            from pathlib import Path

            from cpt.tok import bpe
            from cpt.tok.merge import merge

            base = Path(args.base)
            sentencepiece = base.suffix == ".model" or (base / "tokenizer.model").is_file()
            if not sentencepiece and bpe.tokenizer_json_path(base).is_file():
                result = bpe.merge(args.base, args.add, args.output, args.pieces, args.new_tokens)
                unit, skipped = "tokens", " tokens with ASCII skipped"
                if result.unreachable:
                    skipped += f", {result.unreachable:,} not reachable by one merge"
            else:
                if args.new_tokens is not None:
                    raise TokenizerError(
                        "--new-tokens is for byte-level bases; a SentencePiece merge adds all"
                    )
                result = merge(args.base, args.add, args.output, args.pieces)
                unit, skipped = "pieces", " pieces with ASCII skipped"
            print(
                f"{args.output}: {result.base_pieces:,} base + {result.added:,} added = {result.total:,} {unit}"
                + (f" ({result.skipped_ascii:,}{skipped})" if result.skipped_ascii else "")
            )
        elif args.command == "init-embeddings":
            from cpt.tok.embeddings import init_embeddings

            result = init_embeddings(args.model, args.base_tokenizer, args.tokenizer, args.output)
            print(
                f"{args.output}: vocabulary {result.base_vocab:,} -> {result.merged_vocab:,} (padded to "
                f"{result.padded_vocab:,}); {result.initialised:,} new rows, "
                f"{'tied' if result.tied else 'input and output'} embeddings"
            )
        else:
            from cpt.tok.report import compare, table, verdict

            rows = compare(args.tokenizer, args.input, args.max_docs)
            print(table(rows))
            judged = verdict(rows)
            if judged is not None:
                print(judged)
            if args.json:
                data = [
                    {**r.__dict__, "tokens_per_char": r.tokens_per_char, "bytes_per_token": r.bytes_per_token}
                    for r in rows
                ]
                write_json(args.json, data)  # its folder is made; written whole or not at all
    except (TokenizerError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output's disk full or read-only: one line, not a traceback
        return exit_on_disk_fault(e)
    finally:
        held.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
