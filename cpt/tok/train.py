"""Train a SentencePiece model, or a byte-level BPE, on text streamed from Parquet shards or text files.

Lines are sampled as they stream by (reservoir sampling, seeded), so no corpus-sized temporary file
is written and memory holds only the sample SentencePiece trains on. Defaults follow LLaMA's model:
BPE, byte fallback, digits split, identity normalisation and whitespace kept as is (so the model
merges cleanly into a LLaMA tokenizer), character coverage suited to Chinese.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

from cpt.io import write_bytes, write_json
from cpt.shards import BOOKKEEPING, ShardReadError, read_rows
from cpt.tok.merge import TokenizerError

TRAIN_DEFAULTS = {
    "model_type": "bpe",
    "byte_fallback": True,
    "split_digits": True,
    "character_coverage": 0.9995,  # Chinese-LLaMA; 1.0 would keep every rare character as a piece
    "normalization_rule_name": "identity",  # as LLaMA: full-width punctuation stays as written
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": True,
    "max_sentence_length": 16384,
    # a fixed count, not this machine's: SentencePiece's unigram trainer gives other pieces with other
    # thread counts (BPE does not, but the count is written into the model file either way); 16 is
    # SentencePiece's own default
    "num_threads": 16,
    "minloglevel": 1,  # warnings and errors only
}


def iter_texts(source: str | Path, counts: dict | None = None) -> Iterator[str]:
    """Documents from Parquet shards (their `text` column) or text files (one document a line). Text of
    invalid UTF-8 is decoded with U+FFFD for the bad bytes and, when `counts` is given, counted in its
    `repaired_utf8` (a Parquet value or a line of a text file each)."""
    if any(c in str(source) for c in "*?["):  # a glob: the files it matches, and the files under its folders
        import glob

        matched = sorted(Path(p) for p in glob.glob(str(source), recursive=True))
        files = [p for m in matched for p in ([m] if m.is_file() else sorted(m.rglob("*")))]
        files = [p for p in files if p.is_file() and p.suffix in (".parquet", ".txt", ".utf8")]
        files = [p for p in files if not BOOKKEEPING & set(p.parts)]
        if not files:
            raise TokenizerError(f"{source}: no .parquet, .txt or .utf8 files match it")
        for path in files:
            yield from iter_texts(path, counts)
        return
    source = Path(source)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix in (".parquet", ".txt", ".utf8"))
        files = [p for p in files if not BOOKKEEPING & set(p.parts)]
    else:
        raise TokenizerError(f"{source}: no such file or folder")
    if not files:
        raise TokenizerError(f"{source}: no .parquet, .txt or .utf8 files")
    for path in files:
        if path.suffix == ".parquet":
            try:
                yield from (row["text"] for row in read_rows(path, counts=counts) if row["text"])
            except ShardReadError as e:
                raise TokenizerError(str(e)) from None
        else:
            with path.open("rb") as f:
                for raw in f:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        line = raw.decode("utf-8", errors="replace")
                        if counts is not None:
                            counts["repaired_utf8"] = counts.get("repaired_utf8", 0) + 1
                    if line.strip():
                        yield line.rstrip("\n")


def sample_lines(texts: Iterator[str], max_lines: int, seed: int = 0) -> list[str]:
    """A uniform sample of at most `max_lines` non-empty lines (reservoir sampling)."""
    rng = random.Random(seed)
    sample: list[str] = []
    seen = 0
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            seen += 1
            if len(sample) < max_lines:
                sample.append(line)
            else:
                j = rng.randrange(seen)
                if j < max_lines:
                    sample[j] = line
    return sample


def train(
    source: str | Path,
    output: str | Path,
    vocab_size: int,
    model_type: str = "bpe",
    max_lines: int = 2_000_000,
    seed: int = 0,
    options: dict | None = None,
) -> Path:
    """Train and write `output/tokenizer.model` (and `train.json` with the settings); returns the model."""
    import sentencepiece as spm

    counts: dict = {}
    lines = sample_lines(iter_texts(source, counts), max_lines, seed)
    if not lines:
        raise TokenizerError(f"{source}: no text to train on")
    settings = {**TRAIN_DEFAULTS, "model_type": model_type, "vocab_size": vocab_size, **(options or {})}
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, **settings)
    except RuntimeError as e:
        raise TokenizerError(f"sentencepiece could not train on {source}: {e}") from None
    output = Path(output)
    write_bytes(output / "tokenizer.model", model.getvalue())
    info = {"source": str(source), "lines_sampled": len(lines), "seed": seed, **settings}
    info["repaired_utf8"] = counts.get("repaired_utf8", 0)  # texts of invalid UTF-8, decoded with U+FFFD
    write_json(output / "train.json", info)
    return output / "tokenizer.model"


def train_byte_bpe(
    source: str | Path,
    output: str | Path,
    base: str | Path,
    new_tokens: int,
    max_lines: int = 2_000_000,
    seed: int = 0,
    options: dict | None = None,
) -> Path:
    """Train a byte-level BPE with the base's front end (see `cpt.tok.bpe`); returns its tokenizer.json."""
    from cpt.tok import bpe

    options = dict(options or {})
    min_frequency = options.pop("min_frequency", 2)
    if options:
        raise TokenizerError(f"--set {next(iter(options))}: byte-bpe takes only --set min_frequency=N")
    bpe.load_byte_level(base, "--base")  # before reading the corpus
    counts: dict = {}
    lines = sample_lines(iter_texts(source, counts), max_lines, seed)
    if not lines:
        raise TokenizerError(f"{source}: no text to train on")
    info = {"source": str(source), "lines_sampled": len(lines), "seed": seed}
    info["repaired_utf8"] = counts.get("repaired_utf8", 0)  # texts of invalid UTF-8, decoded with U+FFFD
    return bpe.train(lines, base, new_tokens, output, info, min_frequency)
