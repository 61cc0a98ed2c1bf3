"""Token ids of a SentencePiece-style tokenizer a word at a time, with a cache of the words seen.

`cpt-tok merge` writes tokenizers with SentencePiece's front end: "▁" in front of the text, every
space made "▁", the text split before each "▁", and the BPE model run on each of those words alone.
A document's ids are therefore its words' ids one after the other, and a word's ids depend on the
word only. The tokenizers library does all of this per token (strings that track their alignments, a
String and offsets per token, a 10,000-word cache): about 1 µs of CPU an English token on the
benchmark's machine. Here each distinct word is encoded once by the same model (through the library,
a batch at a time, its threads on every core) and then looked up, so `tokenize` runs faster than the
library called directly while writing the same ids (tests/test_tok_cli.py compares them with the real
LLaMA tokenizer merged with Chinese-LLaMA's pieces, on real and on hostile text).

Only that exact front end is handled (`WordCacheEncoder.of` returns None for any other tokenizer,
which then goes through the library as before). A document holding the text of one of the
tokenizer's added tokens (`</s>`, ...) is encoded by the library too: those are matched in the raw text
before the front end runs.
"""

from __future__ import annotations

import json
import re
from itertools import chain

import numpy as np
from datatrove.utils.logging import logger

# SentencePiece's front end as a tokenizer.json writes it (cpt-tok merge writes these two): "▁" always
# in front (add_dummy_prefix; the Prepend normalizer skips an empty text), spaces as "▁", words split
# before each "▁" (split_by_whitespace)
SENTENCEPIECE_NORMALIZER = {
    "type": "Sequence",
    "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ],
}
SENTENCEPIECE_PRE_TOKENIZER = {
    "type": "Metaspace",
    "replacement": "▁",
    "prepend_scheme": "never",
    "split": True,
}

MAX_WORDS = 1 << 17  # words kept in the cache; once full it keeps what it has (as the library's does)
MAX_WORD_CHARS = 64  # longer words (a line of Chinese, a URL) are encoded each time, never kept
LEARN_CHARS = 8192  # characters of new words encoded as one input of the library
MAX_ADDED_TOKENS = 32  # more added tokens than this: every document goes through the library
CHECKED_TEXTS = 100  # texts of the first batch also encoded by the library and compared


def _state(component) -> dict | None:
    return None if component is None else json.loads(component.__getstate__())


class WordCacheEncoder:
    """`encode(texts)` -> (the texts' ids one after the other as `dtype`, each one's length): the ids
    that `tokenizer.encode_batch_fast` gives when its post-processor appends `eos_id` to every text, as
    datatrove's DocumentTokenizer sets it. The first call's first texts are also encoded by the library
    and compared."""

    def __init__(self, tokenizer, eos_id: int, dtype):
        from tokenizers import Tokenizer

        self.library = tokenizer
        # the same model (shared, not copied) with nothing in front of it: encodes one word as it is
        self.words = Tokenizer(tokenizer.model)
        self.dtype = np.dtype(dtype)
        self.eos = np.array([eos_id], self.dtype).tobytes()
        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        self.added = re.compile("|".join(map(re.escape, added))) if added else None
        self.cache: dict[str, bytes] = {}  # word (without its "▁") -> its ids as `dtype` bytes
        self.checked = False

    @classmethod
    def of(cls, tokenizer, eos_id: int, dtype) -> WordCacheEncoder | None:
        """An encoder for `tokenizer` when it has SentencePiece's front end exactly, else None."""
        from tokenizers.models import BPE

        added = [t.content for t in tokenizer.get_added_tokens_decoder().values()]
        if not (
            isinstance(tokenizer.model, BPE)
            and not tokenizer.model.dropout  # dropout samples: a cached word would not be the library's draw
            and _state(tokenizer.normalizer) == SENTENCEPIECE_NORMALIZER
            and _state(tokenizer.pre_tokenizer) == SENTENCEPIECE_PRE_TOKENIZER
            and tokenizer.truncation is None
            and tokenizer.padding is None
            and len(added) <= MAX_ADDED_TOKENS
            # a "▁" or space inside an added token could match across the front end's changes
            and all(t and "▁" not in t and " " not in t for t in added)
        ):
            return None
        return cls(tokenizer, eos_id, dtype)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        if self.checked:
            return self._encode(texts)
        # once, as a guard against a tokenizers release that encodes this front end otherwise: the
        # library's ids for the first texts, compared; on any difference the library does the rest
        sample = texts[:CHECKED_TEXTS]
        expected = self._library(sample)
        got = self._encode(sample)
        self.checked = True
        if got[1] != expected[1] or not np.array_equal(got[0], expected[0]):
            logger.warning("word-cached ids differ from the tokenizers library's: encoding with the library")
            self._encode = self._library  # type: ignore[method-assign]
            return self._library(texts)
        if len(texts) <= CHECKED_TEXTS:
            return got
        flat, lengths = self._encode(texts[CHECKED_TEXTS:])
        return np.concatenate([got[0], flat]), got[1] + lengths

    def _library(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        ids = [e.ids for e in self.library.encode_batch_fast(texts)]
        return np.fromiter(chain.from_iterable(ids), dtype=self.dtype), [len(x) for x in ids]

    def _learn(self, words: set[str]) -> dict[str, bytes]:
        """Encode the words not seen yet and keep what fits in the cache; returns the others (too long,
        or the cache full). Long words (a line of Chinese) are one input of the library each. Short ones
        would cost ~3 µs a word that way, so they go joined by spaces, a few thousand characters an
        input: the library's front end cuts them apart again, and each token's word index says which
        word it belongs to. Either way the inputs are shared among the library's threads."""
        long = [w for w in words if len(w) > MAX_WORD_CHARS]
        short = sorted(w for w in words if len(w) <= MAX_WORD_CHARS)  # any order gives the same ids
        encoded: list[tuple[str, bytes]] = []
        if long:
            encodings = self.words.encode_batch_fast(["▁" + w for w in long], add_special_tokens=False)
            encoded += [
                (w, np.array(e.ids, self.dtype).tobytes()) for w, e in zip(long, encodings, strict=True)
            ]
        groups, start, chars = [], 0, 0
        for i, word in enumerate(short):
            chars += len(word) + 1
            if chars >= LEARN_CHARS or i == len(short) - 1:
                groups.append(short[start : i + 1])
                start, chars = i + 1, 0
        encodings = self.library.encode_batch([" ".join(g) for g in groups], add_special_tokens=False)
        size = self.dtype.itemsize
        for group, encoding in zip(groups, encodings, strict=True):
            raw = np.array(encoding.ids, self.dtype).tobytes()
            # every word is at least one token ("▁"), so each word index appears, in order
            ends = np.flatnonzero(np.diff(np.array(encoding.word_ids, np.int64), append=len(group))) + 1
            if len(ends) != len(
                group
            ):  # cannot happen: every word is at least its own "▁"; raised, not guessed
                raise ValueError(f"{len(group)} words came back as {len(ends)}")
            begins = [0, *ends[:-1].tolist()]
            encoded += [
                (w, raw[b * size : e * size]) for w, b, e in zip(group, begins, ends.tolist(), strict=True)
            ]
        cache, rest = self.cache, {}
        for word, ids in encoded:
            if len(cache) < MAX_WORDS and len(word) <= MAX_WORD_CHARS:
                cache[word] = ids
            else:
                rest[word] = ids
        return rest

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        cache, eos, size = self.cache, self.eos, self.dtype.itemsize
        # the front end: "▁" + text with spaces as "▁", cut before each "▁"; a word here is what follows
        # one "▁" (an empty text has none: the library puts no "▁" before it). Texts holding an added
        # token's text (None) go through the library.
        split = [
            None if self.added and self.added.search(t) else t.replace("▁", " ").split(" ") if t else []
            for t in texts
        ]
        unseen = set(chain.from_iterable(w for w in split if w)).difference(cache)
        rest = self._learn(unseen) if unseen else {}
        odd = [t for t, words in zip(texts, split, strict=True) if words is None]
        if odd:  # their ids as `_library` gives them, cut per text
            flat, sizes = self._library(odd)
            ends = np.cumsum(sizes).tolist()
            library = iter(flat[e - n : e].tobytes() for e, n in zip(ends, sizes, strict=True))
        parts, lengths = [], []
        for words in split:
            if words is None:
                ids = next(library)
            elif rest and not rest.keys().isdisjoint(words):
                ids = b"".join([cache[w] if w in cache else rest[w] for w in words]) + eos
            else:
                ids = b"".join(map(cache.__getitem__, words)) + eos
            parts.append(ids)
            lengths.append(len(ids) // size)
        return np.frombuffer(b"".join(parts), self.dtype), lengths
