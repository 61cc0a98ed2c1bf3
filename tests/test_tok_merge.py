"""Tokenizer merge (`cpt.tok.merge`): the real LLaMA and Chinese-LLaMA SentencePiece models."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from conftest import shared_data
from cpt.tok.merge import TokenizerError, merge


def base_and_add():
    return shared_data("tokenizers", "llama-32k.model"), shared_data("tokenizers", "chinese-llama-20k.model")


def test_union_of_llama_and_chinese_llama_has_chinese_llamas_published_size(tmp_path):
    base, add = base_and_add()
    result = merge(base, add, tmp_path / "all", pieces="all")
    assert (result.base_pieces, result.added, result.total) == (32000, 17953, 49953)


def test_default_merge_leaves_ascii_encodings_unchanged_and_halves_chinese(tmp_path):
    from transformers import AutoTokenizer

    base, add = base_and_add()
    result = merge(base, add, tmp_path / "merged")
    assert result.added > 17000 and result.skipped_ascii > 0
    old = spm.SentencePieceProcessor(model_file=str(base))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    english = shared_data("english-text", "3261.txt").read_text(encoding="utf-8").splitlines()[200:1200]
    assert all(old.encode(line) == new.encode(line) for line in english)
    chinese = shared_data("chinese-text", "msr_test.utf8").read_text(encoding="utf-8").splitlines()[:400]
    ratio = sum(len(new.encode(s)) for s in chinese) / sum(len(old.encode(s)) for s in chinese)
    assert ratio <= 0.5

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    assert len(hf) == result.total
    for text in [
        "Hello world, this is a test.",
        "今天天气很好，我们去公园散步。",
        "Mixed 中文 and English 123.",
    ]:
        ids = hf.encode(text, add_special_tokens=False)
        assert ids == new.encode(text) and hf.decode(ids) == text


def test_a_file_that_is_not_a_sentencepiece_model_is_refused(tmp_path):
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="junk.model"):
        merge(junk, junk, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_tokenizer_round_trips_exactly_and_encodes_like_sentencepiece(tmp_path):
    from transformers import AutoTokenizer

    base, add = base_and_add()
    merge(base, add, tmp_path / "merged")
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "merged"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    english = shared_data("english-text", "1342-0.txt").read_text(encoding="utf-8").splitlines()[100:1600]
    chinese = shared_data("chinese-text", "pku_test.utf8").read_text(encoding="utf-8").splitlines()[:500]
    spaces = [" said Mrs. Bennet", "  two leading", "trailing ", "a\n\n  b", "全角　空格，和 English 混合。"]
    lines = english + chinese + spaces
    assert all(hf.decode(hf.encode(t, add_special_tokens=False)) == t for t in lines)
    # the same ids but for runs of several spaces, which sentencepiece may fuse into one piece
    single_spaced = [t for t in lines if "  " not in t]
    assert all(hf.encode(t, add_special_tokens=False) == sp.encode(t) for t in single_spaced)
