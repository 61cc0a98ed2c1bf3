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
    """The Chinese test text in a file `test.utf8`: its language is found by language ID, not its name."""
    folder.mkdir()
    (folder / "test.utf8").write_text(data_path(*CHINESE_TEXT).read_text(encoding="utf-8"), encoding="utf-8")
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
    assert "zh 0.894 -> 0.641 tokens/char (saves 28.3%)" in str(v)
    # `--input LANG=PATH` names the language instead
    named = compare([sentencepiece], [f"zh_Hans={tmp_path / 'text'}"], max_docs=50)
    assert {r.lang for r in named} == {"zh_Hans"}


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


def test_verdict_is_judged_on_the_language_extended_and_names_the_next_command():
    v = verdict(rows(1500, 750, 1000, 1000))  # the last tokenizer against the first
    assert (v.base, v.extended, v.tokens_before, v.tokens_after) == ("base", "extended", 2500, 1750)
    assert v.target == "zh" and v.pays and v.pays_from == PAYS_FROM and v.saved == 0.3
    assert [c.lang for c in v.languages] == ["zh", "en"]  # by base tokens, largest first
    assert str(v) == (
        "verdict for zh: extend. zh 1.500 -> 0.750 tokens/char (saves 50.0%), at least the 30% of its tokens "
        "from which extension is likely to pay, given a CPT budget of billions of tokens (Zhao et al. 2024 "
        "found extension hurt at small budgets); en 0.250 -> 0.250 tokens/char (saves 0.0%)\n"
        "next: cpt-tok init-embeddings --model BASE_MODEL --base-tokenizer base --tokenizer extended "
        "--output MODEL_DIR, then tokenize with extended"
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
        "saved": 0.5,
    }
    # however much English the corpus holds: the verdict on Chinese stays
    assert verdict(rows(1500, 750, 100_000, 100_000)).pays


def test_verdict_below_the_threshold_says_keep_the_base_tokenizer_and_what_to_run():
    v = verdict(rows(855, 661, 1048, 1048))  # Llama 3 extended for Chinese: 22.7% of its Chinese tokens
    assert v.target == "zh" and not v.pays
    assert str(v) == (
        "verdict for zh: keep the base tokenizer. zh 0.855 -> 0.661 tokens/char (saves 22.7%), below the 30% "
        "of its tokens from which extension is likely to pay (Chinese-LLaMA-Alpaca-3 did not extend Llama 3); "
        "en 0.262 -> 0.262 tokens/char (saves 0.0%)\n"
        "next: python pipelines/run.py tokenize --input DATA --tokenizer base --output TOKENS, and train the "
        "base model as it is"
    )


def test_verdict_at_and_just_below_the_threshold_and_more_tokens_is_said_so():
    assert verdict(rows(1000, 700, 1000, 1000)).pays  # exactly 30%
    assert not verdict(rows(1000, 701, 1000, 1000)).pays
    v = verdict(rows(1000, 1100, 1000, 1000))
    assert not v.pays and "zh 1.000 -> 1.100 tokens/char (adds 10.0%)" in str(v)


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
