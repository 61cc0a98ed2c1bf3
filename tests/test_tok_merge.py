"""Tokenizer merge (`cpt.tok.merge`): a real LLaMA-style SentencePiece base (Mistral 7B's) and
Chinese-LLaMA's Chinese SentencePiece model."""

from __future__ import annotations

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from conftest import CHINESE_LLAMA, SENTENCEPIECE_BASE, chinese_paragraphs, data_path
from cpt.tok.merge import TokenizerError, merge


def base_and_add():
    return data_path(*SENTENCEPIECE_BASE), data_path(*CHINESE_LLAMA)


def pieces(path) -> list[str]:
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    return [p.piece for p in model.pieces]


def test_union_appends_every_piece_the_base_lacks_after_the_base_ids(tmp_path):
    """With LLaMA's own 32k model this union is Chinese-LLaMA's published 49,953 pieces (17,953 added);
    on Mistral's base the same rule adds 17,187."""
    base, add = base_and_add()
    result = merge(base, add, tmp_path / "all", pieces="all")
    old = pieces(base)
    known = set(old)
    lacking = [p for p in pieces(add) if p not in known]
    assert (result.base_pieces, result.added, result.total) == (32000, len(lacking), 32000 + len(lacking))
    assert pieces(tmp_path / "all" / "tokenizer.model") == old + lacking


def test_default_merge_leaves_ascii_encodings_unchanged_and_shortens_chinese_by_a_third(tmp_path):
    from transformers import AutoTokenizer

    base, add = base_and_add()
    result = merge(base, add, tmp_path / "merged")
    known = set(pieces(base))
    lacking = [p for p in pieces(add) if p not in known]
    assert result.skipped_ascii > 0 and result.added + result.skipped_ascii == len(lacking)
    old = spm.SentencePieceProcessor(model_file=str(base))
    new = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    english = data_path("english-text", "3261.txt").read_text(encoding="utf-8").splitlines()[200:1200]
    assert all(old.encode(line) == new.encode(line) for line in english)
    chinese = chinese_paragraphs()[800:1200]
    ratio = sum(len(new.encode(s)) for s in chinese) / sum(len(old.encode(s)) for s in chinese)
    # 0.665 on this text: Mistral's base already has Chinese characters (on LLaMA's 32k the ratio is below 0.5)
    assert ratio <= 0.7

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
    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8").splitlines()[100:1600]
    chinese = chinese_paragraphs()[:500]
    spaces = [" said Mrs. Bennet", "  two leading", "trailing ", "a\n\n  b", "全角　空格，和 English 混合。"]
    lines = english + chinese + spaces
    assert all(hf.decode(hf.encode(t, add_special_tokens=False)) == t for t in lines)
    # the same ids but for runs of several spaces, which sentencepiece may fuse into one piece
    single_spaced = [t for t in lines if "  " not in t]
    assert all(hf.encode(t, add_special_tokens=False) == sp.encode(t) for t in single_spaced)
