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
import logging
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

    jieba.setLogLevel(logging.WARNING)  # not four INFO lines on the terminal when it loads its dictionary

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


class ChunkWords:
    """The words spaCy's rule-based tokenizer gives a text, asking spaCy once per distinct chunk.

    spaCy's `Tokenizer` cuts a text where whitespace starts and ends and tokenizes every whitespace-free
    chunk on its own (its own cache is keyed by the chunk); the whitespace between chunks becomes
    whitespace tokens or a token's trailing space, which datatrove strips away. So a text's words are its
    chunks' words in order (`str.split()` finds the same chunks: both use Python's whitespace test).
    Building a spaCy `Doc` for every document was most of the time of the MinHash signature and of the
    quality filters; looking each chunk up in a dict gives the same words (`tests/test_dedup.py` and
    `tests/test_steps.py` compare both on real text) at a fraction of the cost. At most `max_chunks` are
    kept, then the cache starts over: the words never depend on what was cached.
    """

    def __init__(self, tokenizer, max_chunks: int = 1 << 20):
        self.tokenizer = tokenizer  # a datatrove SpaCyTokenizer
        self.max_chunks = max_chunks
        self._cache: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        if "IS_ALPHA" in text:
            # spaCy's vocabulary fails on this string once a process has seen it (the first call passes);
            # datatrove then drops it and tokenizes again. Dropped every time here, so a text's words do
            # not depend on what was tokenized before it
            text = text.replace("IS_ALPHA", "")
        cache, chunks = self._cache, text.split()
        if not chunks:
            return []
        new = [c for c in dict.fromkeys(chunks) if c not in cache]
        if new:
            if len(cache) + len(new) > self.max_chunks:
                cache.clear()
                new = list(dict.fromkeys(chunks))
            self._tokenize(new)
        words = []
        for chunk in chunks:
            words += cache[chunk]
        return words

    def _tokenize(self, chunks: list[str]) -> None:
        """One spaCy call for a text's new chunks, joined by spaces: a token followed by a space ends a
        chunk (spaCy keeps the space as the token's `whitespace_`)."""
        nlp = self.tokenizer.tokenizer
        joined = " ".join(chunks)
        nlp.max_length = len(joined) + 10
        with nlp.memory_zone():  # as datatrove does: the vocabulary does not grow with the corpus
            i, words = 0, []
            for token in nlp.tokenizer(joined):
                if word := token.text.strip():  # as datatrove's strip_strings
                    words.append(word)
                if token.whitespace_:
                    self._cache[chunks[i]] = words
                    i, words = i + 1, []
            self._cache[chunks[i]] = words

    def __getstate__(self):  # sent to worker processes without the cache
        return {"tokenizer": self.tokenizer, "max_chunks": self.max_chunks, "_cache": {}}


_SPLITTERS: dict[str, ChunkWords] = {}  # one a language and process: tasks share spaCy and the chunk cache


def word_splitter(tokenizer):
    """`tokenizer.word_tokenize`, or the same words through `ChunkWords` where the tokenizer is spaCy's
    rule-based one (English and the other languages spaCy tokenizes by rules, not by a segmenter).

    datatrove copies a stage's steps for every task, and each copy would load spaCy again (a MinHash
    candidate check runs one task a band); the `ChunkWords` of a language is made once a process."""
    from datatrove.utils.word_tokenizers import SpaCyTokenizer

    if type(tokenizer) is SpaCyTokenizer and tokenizer.language not in ("zh", "ja", "th", "vi", "ko"):
        if tokenizer.language in _SPLITTERS:
            return _SPLITTERS[tokenizer.language]
        import spacy.tokenizer

        if type(tokenizer.tokenizer.tokenizer) is spacy.tokenizer.Tokenizer:
            return _SPLITTERS.setdefault(tokenizer.language, ChunkWords(tokenizer))
    return tokenizer.word_tokenize


class ChunkedWordTokenizer(WordTokenizer):
    """datatrove's word tokenizer for `language`, its words through `word_splitter` (the same words,
    faster where it is spaCy's rules) and kept for the next call on the same text (Gopher repetition,
    Gopher quality and FineWeb quality split a page one after the other); sentences are datatrove's."""

    def __init__(self, language: str):
        super().__init__(language)
        self._words = None
        self._last_text: str | None = None
        self._last_words: list[str] = []

    @property
    def datatrove(self) -> WordTokenizer:
        from datatrove.utils.word_tokenizers import load_word_tokenizer

        return load_word_tokenizer(self.language)

    def word_tokenize(self, text: str) -> list[str]:
        if text != self._last_text:
            if self._words is None:
                self._words = word_splitter(self.datatrove)
            self._last_words = self._words(text)
            self._last_text = text
        return list(self._last_words)

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return self.datatrove.span_tokenize(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return self.datatrove.sent_tokenize(text)

    def __getstate__(self):
        return {"language": self.language, "_words": None, "_last_text": None, "_last_words": []}


def word_tokenizers(languages: list[str]) -> dict[str, WordTokenizer]:
    """lid.176 code -> the word tokenizer datatrove's filters take as `language`: jieba for Chinese,
    datatrove's own (through `ChunkedWordTokenizer`) for the others."""
    jieba = JiebaTokenizer()
    return {lang: jieba if lang == "zh" else ChunkedWordTokenizer(lang) for lang in [*languages, "en"]}


def filter_params(cls: type) -> set[str]:
    """Keyword arguments a datatrove filter accepts (used to reject unknown keys in the config), and
    cpt's `more_stop_chars` where the filter takes `stop_chars`."""
    params = {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "exclusion_writer")}
    return params | {"more_stop_chars"} if "stop_chars" in params else params


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
        tokenizers: dict[str, WordTokenizer] | None = None,
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
            params.setdefault("language", tokenizers.get(lang, tokenizers["en"]))
            if isinstance(params.get("stop_chars"), (str, list)):  # YAML gives a string or a list
                params["stop_chars"] = tuple(params["stop_chars"])  # str.endswith takes a tuple
            if "more_stop_chars" in params:  # cpt's: characters that end a line too, beside the default's
                from datatrove.utils.text import TERMINAL_PUNCTUATION

                more = tuple(params.pop("more_stop_chars"))
                params["stop_chars"] = tuple(params.get("stop_chars") or TERMINAL_PUNCTUATION) + more
            self.filters[lang] = cls(**params)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        lang = doc.metadata.get("lang", UNKNOWN_LANG)
        f = self.filters.get(lang, self.filters["default"])
        result = f.filter(doc)
        if self.kind == "c4_quality" and result == (False, "too_few_sentences"):
            # C4 removes lines (a too long word, `javascript`, a policy phrase, ...) and then counts the
            # sentences left: a document whose sentences were all in removed lines is `c4_lines_removed`
            from datatrove.utils.text import split_into_sentences

            if len(split_into_sentences(doc.text, f.language)) >= f.min_num_sentences:
                return False, "c4_lines_removed"
        return result
