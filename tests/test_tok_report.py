"""Tokenizer comparison (`cpt.tok.report`): SentencePiece and tokenizer.json tokenizers on real Chinese
text, and the verdict on whether extension pays."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from conftest import CHINESE_TEXT, SENTENCEPIECE_BASE, chinese_paragraphs, data_path, llama3_tokenizer
from cpt.tok.merge import TokenizerError
from cpt.tok.report import (
    PAYS_FROM,
    HFTokenizer,
    Row,
    SentencePieceTokenizer,
    compare,
    load_tokenizer,
    verdict,
)


def chinese_corpus(folder):
    """The Chinese test text in a file `zh.utf8`, so the language is named by its stem."""
    folder.mkdir()
    (folder / "zh.utf8").write_text(data_path(*CHINESE_TEXT).read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def test_llama_3_and_a_sentencepiece_base_tokens_per_char_on_chinese_prose(tmp_path):
    """Measured on the Chinese test text: Mistral's 32k SentencePiece 0.894 tokens/char, Llama 3.2 0.641
    (on SIGHAN's news text LLaMA's own 32k needs 1.501 and Llama 3.2 0.839)."""
    llama3, sentencepiece = llama3_tokenizer(), data_path(*SENTENCEPIECE_BASE)
    assert isinstance(load_tokenizer(llama3), HFTokenizer)
    assert isinstance(load_tokenizer(sentencepiece), SentencePieceTokenizer)
    rows = compare([sentencepiece, llama3], chinese_corpus(tmp_path / "text"))
    by_name = {r.tokenizer: r for r in rows}
    assert {r.lang for r in rows} == {"zh"}
    # no special tokens: Llama 3's <|begin_of_text|> on every line would add to it
    assert abs(by_name[str(llama3)].tokens_per_char - 0.641) < 0.01
    assert abs(by_name[str(sentencepiece)].tokens_per_char - 0.894) < 0.01
    v = verdict(rows)
    before, after = by_name[str(sentencepiece)].tokens, by_name[str(llama3)].tokens
    assert v.saved == (before - after) / before and not v.pays  # 28.3%, below the 30% from which it pays
    assert "saves 28.3% of this corpus's tokens (zh 0.894 -> 0.641 tokens/char)" in str(v)


def test_a_folder_with_tokenizer_model_and_tokenizer_json_keeps_sentencepiece(tmp_path):
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(data_path(*SENTENCEPIECE_BASE), both / "tokenizer.model")
    shutil.copy(llama3_tokenizer() / "tokenizer.json", both / "tokenizer.json")
    assert isinstance(load_tokenizer(both), SentencePieceTokenizer)
    assert isinstance(load_tokenizer(both / "tokenizer.json"), HFTokenizer)


@pytest.mark.parametrize("which", ["llama-3.2", "sentencepiece"])
def test_batched_encoding_equals_one_by_one(which):
    tok = load_tokenizer(llama3_tokenizer() if which == "llama-3.2" else data_path(*SENTENCEPIECE_BASE))
    lines = chinese_paragraphs()[800:1100]
    lines += ["Hello world, this is a test.", "  leading spaces", "", "Mixed 中文 and English 123."]
    assert tok.encode_batch(lines) == [tok.encode(line) for line in lines]
    assert tok.encode_batch([]) == []


def test_llama_3_encodes_without_special_tokens():
    tok = load_tokenizer(llama3_tokenizer())
    assert 128000 not in tok.encode("Hello world")  # <|begin_of_text|>
    assert tok.encode("") == []


def rows(base_zh: int, ext_zh: int, base_en: int, ext_en: int) -> list[Row]:
    return [
        Row("base", "zh", 1000, 3000, base_zh),
        Row("mid", "zh", 1000, 3000, (base_zh + ext_zh) // 2),
        Row("base", "en", 4000, 4000, base_en),
        Row("extended", "zh", 1000, 3000, ext_zh),
        Row("mid", "en", 4000, 4000, base_en),
        Row("extended", "en", 4000, 4000, ext_en),
    ]


def test_verdict_above_the_threshold_says_extension_is_likely_to_pay():
    v = verdict(rows(1500, 750, 1000, 1000))  # the last tokenizer against the first
    assert (v.base, v.extended, v.tokens_before, v.tokens_after) == ("base", "extended", 2500, 1750)
    assert v.saved == (2500 - 1750) / 2500 == 0.3 and v.pays and v.pays_from == PAYS_FROM
    assert [c.lang for c in v.languages] == ["zh", "en"]  # by base tokens, largest first
    assert str(v) == (
        "verdict: extension saves 30.0% of this corpus's tokens (zh 1.500 -> 0.750 tokens/char, "
        "en 0.250 -> 0.250); at least the 30% from which it is likely to pay, given a CPT budget of "
        "billions of tokens (Zhao et al. 2024 found extension hurt at small budgets)"
    )
    data = dataclasses.asdict(v)
    assert json.loads(json.dumps(data)) == data and data["line"] == str(v)
    assert data["languages"][0] == {
        "lang": "zh",
        "chars": 1000,
        "tokens_before": 1500,
        "tokens_after": 750,
        "tokens_per_char_before": 1.5,
        "tokens_per_char_after": 0.75,
    }


def test_verdict_below_the_threshold_says_keep_the_base_tokenizer():
    v = verdict(rows(855, 661, 1048, 1048))
    assert v.saved == (855 - 661) / (855 + 1048) and not v.pays
    assert str(v) == (
        "verdict: extension saves 10.2% of this corpus's tokens (en 0.262 -> 0.262 tokens/char, "
        "zh 0.855 -> 0.661); below the 30% from which it is likely to pay: keep the base tokenizer "
        "(Chinese-LLaMA-Alpaca-3 did not extend Llama 3)"
    )


def test_verdict_just_below_the_threshold_does_not_pay_and_more_tokens_is_said_so():
    assert not verdict(rows(1500, 751, 1000, 1000)).pays
    v = verdict(rows(1000, 1100, 1000, 1000))
    assert v.saved == -0.05 and not v.pays
    assert str(v).startswith("verdict: extension adds 5.0% to this corpus's tokens")


def test_one_tokenizer_has_no_verdict():
    assert verdict([Row("base", "zh", 10, 30, 15), Row("base", "en", 10, 10, 3)]) is None


def test_a_missing_or_unreadable_tokenizer_is_one_line_naming_it(tmp_path):
    for path, why in [
        (tmp_path / "nowhere.model", "no such tokenizer"),
        (tmp_path, "no tokenizer.model or tokenizer.json"),
    ]:
        with pytest.raises(TokenizerError, match="no") as e:
            load_tokenizer(path)
        assert str(e.value).startswith(str(path)) and why in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    (tmp_path / "tokenizer.json").write_text("{}")
    for path in (tmp_path / "junk.model", tmp_path / "tokenizer.json", tmp_path):
        with pytest.raises(TokenizerError) as e:
            load_tokenizer(path)
        assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    with pytest.raises(TokenizerError, match="nowhere"):
        compare([tmp_path / "nowhere"], tmp_path)
