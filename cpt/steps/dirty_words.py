"""Block-listed ("dirty") words: drop documents where they make up more than a small share of the text.

C4 dropped a page on any single match (Raffel et al. 2020), which removes much medical and LGBTQ+
text (Dodge et al. 2021); cpt thresholds the share of characters inside matches instead. Lists are
plain files, one word or phrase a line, shipped in `cpt/resources/dirty_words/` (sources in
SOURCES.md there). Languages written with spaces match whole words; Chinese matches substrings, since
its words are not delimited.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from cpt.shards import UNKNOWN_LANG

RESOURCES = Path(__file__).resolve().parent.parent / "resources" / "dirty_words"
UNSPACED_LANGS = {"zh", "ja", "th", "lo", "my", "km"}


def default_lists() -> dict[str, str]:
    """Language code -> shipped list file."""
    return {p.stem: str(p) for p in sorted(RESOURCES.glob("*.txt"))}


def load_words(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return sorted({w.strip().lower() for w in lines if w.strip() and not w.startswith("#")})


def compile_pattern(words: list[str], unspaced: bool) -> re.Pattern | None:
    if not words:
        return None
    alternation = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(alternation if unspaced else rf"(?<!\w)(?:{alternation})(?!\w)", re.IGNORECASE)


def dirty_share(text: str, pattern: re.Pattern | None) -> float:
    """Share of the text's non-space characters that lie inside block-listed words."""
    if pattern is None:
        return 0.0
    matched = sum(len(m.group(0)) for m in pattern.finditer(text))
    if not matched:
        return 0.0
    return matched / max(1, len(text) - text.count(" ") - text.count("\n"))


class DirtyWordsFilter(BaseFilter):
    """Removal reason: `dirty_words`. Stores `dirty_word_share` in the metadata of every document."""

    name = "🤬 Dirty words"

    def __init__(self, lists: dict[str, str], max_share: float = 0.01):
        super().__init__()
        self.lists = {lang: str(path) for lang, path in lists.items()}
        self.max_share = max_share
        self._patterns = None

    def _pattern(self, lang: str) -> re.Pattern | None:
        if self._patterns is None:
            self._patterns = {
                lang: compile_pattern(load_words(path), lang in UNSPACED_LANGS)
                for lang, path in self.lists.items()
            }
        return self._patterns.get(lang)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        share = dirty_share(doc.text, self._pattern(doc.metadata.get("lang", UNKNOWN_LANG)))
        doc.metadata["dirty_word_share"] = share
        return share <= self.max_share or (False, "dirty_words")
