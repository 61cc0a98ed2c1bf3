"""Gopher repetition, Gopher quality, C4 and FineWeb quality filters, configured per language.

datatrove's filters take one `language` at construction, which picks the word tokenizer and, with
English defaults, judge Chinese as one giant "word" per line. cpt builds one filter per language with
settings right for that language and dispatches each document by its `lang` label. Chinese goes
through datatrove's spaCy + jieba segmentation, which its tokenizer table assigns to `cmn`; `zh` would
get a non-segmenting tokenizer there (a "FALSE" string read as true), so `zh` is mapped to `cmn`.
"""

from __future__ import annotations

import inspect

from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter

from cpt.shards import UNKNOWN_LANG

HEURISTIC_FILTERS = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4_quality": C4QualityFilter,
    "fineweb_quality": FineWebQualityFilter,
}

# lid.176 code -> datatrove word-tokenizer language, where the two differ
WORD_TOKENIZER_LANGUAGE = {"zh": "cmn"}


def tokenizer_language(lang: str) -> str:
    return WORD_TOKENIZER_LANGUAGE.get(lang, lang)


def filter_params(cls: type) -> set[str]:
    """Keyword arguments a datatrove filter accepts (used to reject unknown keys in the config)."""
    return {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "exclusion_writer")}


class PerLanguageFilter(BaseFilter):
    """Apply the filter built for the document's `lang`, or the `default` one for other languages.

    Removal reasons are the wrapped filter's own (`dup_line_frac`, `top_2_gram`, `gopher_short_doc`, ...).
    """

    def __init__(self, name: str, kind: str, params_by_lang: dict[str, dict], languages: list[str]):
        self.name = name  # before super().__init__(), which names the step's stats after it
        super().__init__()
        self.kind = kind
        cls = HEURISTIC_FILTERS[kind]
        self.filters = {}
        for lang in [*languages, "default"]:
            params = dict(params_by_lang.get("default", {}))
            params.update(params_by_lang.get(lang, {}) if lang != "default" else {})
            params.setdefault("language", tokenizer_language(lang if lang != "default" else "en"))
            self.filters[lang] = cls(**params)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("lang", UNKNOWN_LANG)
        return self.filters.get(lang, self.filters["default"]).filter(doc)
