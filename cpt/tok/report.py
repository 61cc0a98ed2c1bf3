"""Compare tokenizers on text: tokens per character and bytes per token, per language, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cpt.shards import ShardReadError, read_rows
from cpt.tok.merge import TokenizerError


@dataclass
class Row:
    tokenizer: str
    lang: str
    chars: int
    bytes: int
    tokens: int

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)


def load_sentencepiece(path: str | Path):
    import sentencepiece as spm

    path = Path(path)
    model = path / "tokenizer.model" if path.is_dir() else path
    if not model.is_file():
        raise TokenizerError(
            f"{path}: no SentencePiece model (a .model file or a folder with tokenizer.model)"
        )
    return spm.SentencePieceProcessor(model_file=str(model))


def texts_by_language(source: str | Path, max_docs: int) -> Iterator[tuple[str, str]]:
    """(lang, text): Parquet shards give their `lang` column; a text file is named by its stem."""
    from cpt.tok.train import iter_texts

    source = Path(source)
    parquet = sorted(source.rglob("*.parquet")) if source.is_dir() else []
    if parquet:
        n = 0
        for path in parquet:
            if "removed" in path.parts or ".work" in path.parts:
                continue
            try:
                for row in read_rows(path, ("text", "lang")):
                    if n >= max_docs:
                        return
                    n += 1
                    yield row["lang"] or "und", row["text"]
            except ShardReadError as e:
                raise TokenizerError(str(e)) from None
        return
    files = (
        [source]
        if source.is_file()
        else sorted(p for p in source.rglob("*") if p.suffix in (".txt", ".utf8"))
    )
    for path in files:
        for i, text in enumerate(iter_texts(path)):
            if i >= max_docs:
                break
            yield path.stem, text


def compare(tokenizers: list[str | Path], source: str | Path, max_docs: int = 10_000) -> list[Row]:
    models = [(str(t), load_sentencepiece(t)) for t in tokenizers]
    totals: dict[tuple[str, str], Row] = {}
    for lang, text in texts_by_language(source, max_docs):
        chars, size = len(text), len(text.encode("utf-8"))
        for name, sp in models:
            row = totals.setdefault((name, lang), Row(name, lang, 0, 0, 0))
            row.chars += chars
            row.bytes += size
            row.tokens += len(sp.encode(text))
    if not totals:
        raise TokenizerError(f"{source}: no text found")
    return list(totals.values())


def table(rows: list[Row]) -> str:
    """One line per language and tokenizer; `vs first` is the token count relative to the first one."""
    first = rows[0].tokenizer
    base_tokens = {r.lang: r.tokens for r in rows if r.tokenizer == first}
    lines = [f"{'lang':<8} {'tokenizer':<40} {'tokens':>10} {'tok/char':>9} {'bytes/tok':>9} {'vs first':>9}"]
    for r in sorted(rows, key=lambda r: (r.lang, r.tokenizer != first)):
        ratio = r.tokens / max(base_tokens.get(r.lang, 0), 1)
        name = r.tokenizer if len(r.tokenizer) <= 40 else "…" + r.tokenizer[-39:]
        lines.append(
            f"{r.lang:<8} {name:<40} {r.tokens:>10,} {r.tokens_per_char:>9.3f} {r.bytes_per_token:>9.2f} {ratio:>9.3f}"
        )
    return "\n".join(lines)
