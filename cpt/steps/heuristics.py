"""Gopher repetition, Gopher quality, C4 and FineWeb quality filters, configured per language.

datatrove's filters take one `language` at construction, which picks the word tokenizer and, with
English defaults, judge Chinese as one giant "word" per line. cpt builds one filter per language with
settings right for that language and dispatches each document by its `lang` label.

Chinese is segmented with jieba. datatrove's table gives `zh` a non-segmenting tokenizer (a "FALSE"
string read as true) and `cmn` spaCy wrapping jieba; cpt passes datatrove a `JiebaTokenizer` instead
(the same words as `cmn`, without spaCy's per-call overhead), one instance shared by the four filters,
so a page that Gopher repetition and Gopher quality both split is segmented once.
"""

from __future__ import annotations

import inspect
import re

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

from cpt.shards import UNKNOWN_LANG

HEURISTIC_FILTERS = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}

# a sentence: text up to and including a run of terminal punctuation (and closing quotes), or the rest
_ZH_SENTENCE = re.compile(r"[^。！？!?…]*[。！？!?…]+[”’」』）)]*|[^。！？!?…]+")


def chinese_words(text: str) -> list[str]:
    """Chinese words from jieba (accurate mode), whitespace dropped: the one Chinese word splitter."""
    import jieba

    return [w for w in (t.strip() for t in jieba.lcut(text)) if w]


class JiebaTokenizer(WordTokenizer):
    """Chinese words from jieba (accurate mode), sentences split on Chinese terminal punctuation.

    Keeps the words of the last text it split: Gopher repetition and Gopher quality split the same
    document one after the other.
    """

    def __init__(self):
        super().__init__("zh")
        self._last_text: str | None = None
        self._last_words: list[str] = []

    def word_tokenize(self, text: str) -> list[str]:
        if text != self._last_text:
            self._last_words = chinese_words(text)
            self._last_text = text
        return list(self._last_words)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _ZH_SENTENCE.finditer(text) if m.group().strip()]

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b].strip() for a, b in self.span_tokenize(text)]

    def __getstate__(self):
        return {"language": self.language, "_last_text": None, "_last_words": []}


def word_tokenizers(languages: list[str]) -> dict[str, str | WordTokenizer]:
    """lid.176 code -> what datatrove's filters take as `language` (a tokenizer code or instance)."""
    jieba = JiebaTokenizer()
    return {lang: jieba if lang == "zh" else lang for lang in [*languages, "en"]}


def filter_params(cls: type) -> set[str]:
    """Keyword arguments a datatrove filter accepts (used to reject unknown keys in the config)."""
    return {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "exclusion_writer")}


class PerLanguageFilter(BaseFilter):
    """Apply the filter built for the document's `lang`, or the `default` one for other languages.

    Removal reasons are the wrapped filter's own (`dup_line_frac`, `top_2_gram`, `gopher_short_doc`, ...).
    """

    def __init__(
        self,
        name: str,
        kind: str,
        params_by_lang: dict[str, dict],
        languages: list[str],
        tokenizers: dict[str, str | WordTokenizer] | None = None,
    ):
        self.name = name  # before super().__init__(), which names the step's stats after it
        super().__init__()
        self.kind = kind
        cls = HEURISTIC_FILTERS[kind]
        tokenizers = tokenizers or word_tokenizers(languages)
        self.filters = {}
        for lang in [*languages, "default"]:
            params = dict(params_by_lang.get("default", {}))
            params.update(params_by_lang.get(lang, {}) if lang != "default" else {})
            params.setdefault("language", tokenizers.get(lang, "en"))
            self.filters[lang] = cls(**params)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("lang", UNKNOWN_LANG)
        return self.filters.get(lang, self.filters["default"]).filter(doc)
