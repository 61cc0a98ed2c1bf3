"""Compare tokenizers on text: tokens per character and bytes per token, per language, side by side."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
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
    """A `sentencepiece.SentencePieceProcessor` for a `.model` file or a folder with `tokenizer.model`."""
    import sentencepiece as spm

    path = Path(path)
    model = path / "tokenizer.model" if path.is_dir() else path
    if not model.is_file():
        raise TokenizerError(
            f"{path}: no SentencePiece model (a .model file or a folder with tokenizer.model)"
        )
    try:
        return spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"{model}: not a SentencePiece model ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


class SentencePieceTokenizer:
    """A SentencePiece model; `encode` adds no BOS or EOS."""

    def __init__(self, name: str, path: str | Path):
        self.name = name
        self.sp = load_sentencepiece(path)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(list(texts)) if texts else []


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (byte-level BPE: Llama 3, Qwen); no special tokens are added."""

    def __init__(self, name: str, path: str | Path):
        from tokenizers import Tokenizer

        self.name = name
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on a malformed file
            raise TokenizerError(f"{path}: not a tokenizer.json ({_first_line(e)})") from None
        # a file may enable padding or truncation: counts must be of each text whole and alone
        self.tok.no_padding()
        self.tok.no_truncation()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]


def load_tokenizer(path: str | Path) -> SentencePieceTokenizer | HFTokenizer:
    """A tokenizer with `.name` (the path as given), `.encode(text)` and `.encode_batch(texts)`, neither
    adding special tokens: a SentencePiece `.model` file or a folder with `tokenizer.model` (kept even when
    the folder also holds tokenizer.json), or a `tokenizer.json` file or a folder with only that."""
    name, path = str(path), Path(path)
    if path.is_dir():
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer(name, path / "tokenizer.model")
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(name, path / "tokenizer.json")
        raise TokenizerError(f"{path}: no tokenizer.model or tokenizer.json in this folder")
    if not path.is_file():
        raise TokenizerError(
            f"{path}: no such tokenizer (a .model file, a tokenizer.json or a folder with either)"
        )
    if path.suffix == ".json":
        return HFTokenizer(name, path)
    return SentencePieceTokenizer(name, path)


_LANG = re.compile(r"[a-z]{2,3}(?:[_-][A-Za-z]{2,4})?")  # zh, en, yue, zh_Hant: a language code


def input_spec(value: str) -> tuple[str | None, Path]:
    """`--input [LANG=]PATH`: the language its text is counted under (None: found out) and the path."""
    lang, sep, path = value.partition("=")
    if sep and _LANG.fullmatch(lang):
        return lang, Path(path)
    return None, Path(value)


def _detected(texts: list[str]) -> str:
    """The language most of `texts` are in, by language ID (lid.176, offline), or `und`."""
    from collections import Counter

    from datatrove.data import Document

    from cpt.steps.langid import LanguageID

    lid = LanguageID(["en"], min_score=0.0)
    votes = Counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        lid.filter(doc)
        votes[doc.metadata.get("lang") or "und"] += 1
    return votes.most_common(1)[0][0] if votes else "und"


def texts_by_language(
    source: str | Path, max_docs: int, lang: str | None = None
) -> Iterator[tuple[str, str]]:
    """(lang, text): Parquet shards give their `lang` column; text files (one document a line) the
    language their first 200 documents are in, by language ID. `lang` names it instead, for all."""
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
                    yield lang or row["lang"] or "und", row["text"]
            except ShardReadError as e:
                raise TokenizerError(str(e)) from None
        return
    files = (
        [source]
        if source.is_file()
        else sorted(p for p in source.rglob("*") if p.suffix in (".txt", ".utf8"))
    )
    for path in files:
        texts = []
        for text in iter_texts(path):
            if len(texts) >= max_docs:
                break
            texts.append(text)
        label = lang or _detected(texts[:200])
        yield from ((label, text) for text in texts)


BATCH = 256  # documents encoded at a time; the counts are those of encoding each alone


def _batches(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    batch: list[tuple[str, str]] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def compare(
    tokenizers: list[str | Path], source: str | Path | list[str], max_docs: int = 10_000
) -> list[Row]:
    """Each tokenizer's counts on the text of `source`: a path, or `--input` values (`[LANG=]PATH`)."""
    # the same tokenizer named twice would count its text twice in one row
    models = [load_tokenizer(t) for t in dict.fromkeys(str(t) for t in tokenizers)]
    specs = [input_spec(str(v)) for v in source] if isinstance(source, list) else [(None, Path(source))]
    for _, path in specs:
        if not path.exists():
            raise TokenizerError(f"{path}: no such file or folder")
    pairs = (pair for lang, path in specs for pair in texts_by_language(path, max_docs, lang))
    totals: dict[tuple[str, str], Row] = {}
    for batch in _batches(pairs, BATCH):
        texts = [text for _, text in batch]
        counts = [[len(ids) for ids in m.encode_batch(texts)] for m in models]
        for i, (lang, text) in enumerate(batch):
            chars, size = len(text), len(text.encode("utf-8"))
            for m, n in zip(models, counts, strict=True):
                row = totals.setdefault((m.name, lang), Row(m.name, lang, 0, 0, 0))
                row.chars += chars
                row.bytes += size
                row.tokens += n[i]
    if not totals:
        raise TokenizerError(f"{', '.join(str(p) for _, p in specs)}: no text found")
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


# Extension is likely to pay for a language when it saves at least this share of that language's tokens:
# - Cui et al. 2023 (Chinese-LLaMA, arXiv 2304.08177): extending LLaMA's 32k vocabulary to 49,953 roughly
#   halved the tokens of Chinese text, and paid;
# - Chinese-LLaMA-Alpaca-3 (ymcui/Chinese-LLaMA-Alpaca-3, README and issue 3): Llama 3's 128k tokenizer
#   already encodes Chinese about 95% as efficiently as their extended Chinese-LLaMA-2 one, so they did
#   not extend it;
# - Zhao et al. 2024, "LLaMA Beyond English: An Empirical Study on Language Capability Transfer" (arXiv
#   2401.01055): at small CPT budgets extension did worse than the original vocabulary (0.5B tokens on
#   the original beat 30B on the extended one), so a saving must be large to outweigh relearning.
# Judged per language: a share of the whole corpus would change with how much English it holds.
PAYS_FROM = 0.30


@dataclass
class LanguageChange:
    """One language's tokens under the base (first) tokenizer and the extended (last) one."""

    lang: str
    chars: int
    tokens_before: int
    tokens_after: int
    tokens_per_char_before: float
    tokens_per_char_after: float
    saved: float = 0.0  # 1 - after / before, of this language's tokens


@dataclass
class Verdict:
    """Whether extending the base tokenizer is likely to pay, judged on the language it saves most on (the
    one it was made for): `pays` when that saving reaches `pays_from`. `str()` is the verdict line and the
    next command, also kept in `line` so that `dataclasses.asdict()` holds it."""

    base: str
    extended: str
    tokens_before: int
    tokens_after: int
    saved: float  # over all the languages read: depends on the mix, shown for reference only
    pays_from: float
    pays: bool
    languages: list[LanguageChange]
    target: str = ""  # the language the extension saves most on
    line: str = field(init=False)

    def __post_init__(self) -> None:
        self.line = self._render()

    def __str__(self) -> str:
        return self.line

    def _render(self) -> str:
        def change(c: LanguageChange) -> str:
            what = f"saves {c.saved:.1%}" if c.saved >= 0 else f"adds {-c.saved:.1%}"
            return f"{c.lang} {c.tokens_per_char_before:.3f} -> {c.tokens_per_char_after:.3f} tokens/char ({what})"

        target = next(c for c in self.languages if c.lang == self.target)
        others = [change(c) for c in self.languages if c is not target]
        rest = f"; {', '.join(others)}" if others else ""
        threshold = f"{self.pays_from:.0%}"
        if self.pays:
            return (
                f"verdict for {target.lang}: extend. {change(target)}, at least the {threshold} of its tokens from "
                "which extension is likely to pay, given a CPT budget of billions of tokens (Zhao et al. 2024 "
                f"found extension hurt at small budgets){rest}\n"
                f"next: cpt-tok init-embeddings --model BASE_MODEL --base-tokenizer {self.base} --tokenizer "
                f"{self.extended} --output MODEL_DIR, then tokenize with {self.extended}"
            )
        return (
            f"verdict for {target.lang}: keep the base tokenizer. {change(target)}, below the {threshold} of its "
            f"tokens from which extension is likely to pay (Chinese-LLaMA-Alpaca-3 did not extend Llama 3){rest}\n"
            f"next: python pipelines/run.py tokenize --input DATA --tokenizer {self.base} --output TOKENS, and "
            "train the base model as it is"
        )


def verdict(rows: list[Row]) -> Verdict | None:
    """The last tokenizer of `rows` against the first (the base), over the languages both have; None with
    a single tokenizer. Languages are listed by their base token count, largest first."""
    names = list(dict.fromkeys(r.tokenizer for r in rows))
    if len(names) < 2:
        return None
    base, extended = names[0], names[-1]
    before = {r.lang: r for r in rows if r.tokenizer == base}
    after = {r.lang: r for r in rows if r.tokenizer == extended}
    langs = sorted(before.keys() & after.keys(), key=lambda lang: (-before[lang].tokens, lang))
    if not langs:
        return None

    def saving(b: int, a: int) -> Fraction:  # exact: a saving of exactly PAYS_FROM pays whatever the rounding
        return Fraction(b - a, b) if b else Fraction(0)

    changes = [
        LanguageChange(
            lang,
            before[lang].chars,
            before[lang].tokens,
            after[lang].tokens,
            before[lang].tokens_per_char,
            after[lang].tokens_per_char,
            float(saving(before[lang].tokens, after[lang].tokens)),
        )
        for lang in langs
    ]
    target = max(
        langs, key=lambda lang: (saving(before[lang].tokens, after[lang].tokens), -langs.index(lang))
    )
    tokens_before = sum(c.tokens_before for c in changes)
    tokens_after = sum(c.tokens_after for c in changes)
    return Verdict(
        base=base,
        extended=extended,
        tokens_before=tokens_before,
        tokens_after=tokens_after,
        saved=float(saving(tokens_before, tokens_after)),
        pays_from=PAYS_FROM,
        pays=saving(before[target].tokens, after[target].tokens) >= Fraction(str(PAYS_FROM)),
        languages=changes,
        target=target,
    )
