"""The needle-in-a-haystack check: cases built from real held-out token shards (Pride and Prejudice in the
Llama 3.2 tokenizer), scored by stubs that know or do not know the key, and by a tiny real Llama."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from conftest import data_path, llama3_tokenizer
from cpt.tokens import write_manifest
from trainer.config import NeedleConfig
from trainer.evaluation import needle

SEQ_LEN = 256
LENGTHS = [64, 128, 256]
DEPTHS = [0, 25, 50, 75, 100]


def _shards(folder: Path, docs: list[list[int]], tokenizer_dir: Path) -> Path:
    """A held-out token-shard folder as `run.py tokenize` leaves it: uint32 ids (the vocabulary is over
    65,536), the uint64 index of document ends, tokens.json."""
    folder.mkdir(parents=True)
    np.concatenate(docs).astype(np.uint32).tofile(folder / "00000_unshuffled.ds")
    np.cumsum([len(d) for d in docs]).astype(np.uint64).tofile(folder / "00000_unshuffled.ds.index")
    write_manifest(folder, folder.name, tokenizer_dir, 4)
    return folder


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    return llama3_tokenizer()


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, tokenizer, tokenizer_dir) -> Path:
    """200 paragraphs of the novel, each a document ending in EOS."""
    text = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    paragraphs = [p.replace("\n", " ").strip() for p in re.split(r"\n\s*\n", text)]
    paragraphs = [p for p in paragraphs if len(p) > 80][50:250]  # past the Gutenberg header
    docs = [tokenizer.encode(p, add_special_tokens=False) + [tokenizer.eos_token_id] for p in paragraphs]
    return _shards(tmp_path_factory.mktemp("needle") / "heldout_en", docs, tokenizer_dir)


@pytest.fixture(scope="module")
def cases(heldout, tokenizer):
    return needle.build_cases(heldout, tokenizer, LENGTHS, DEPTHS, trials=3, seed=7)


def _knows_the_key(tokenizer):
    """A generate that reads the key out of the prompt's needle sentence: right by construction."""

    def generate(prompts, max_new_tokens):
        keys = [
            re.search(r"The pass key is (\d{5})\. Remember", tokenizer.decode(p)).group(1) for p in prompts
        ]
        return [tokenizer.encode(f" {k}", add_special_tokens=False)[:max_new_tokens] for k in keys]

    return generate


def test_cases_have_the_exact_length_and_the_needle_at_its_depth(cases, tokenizer):
    assert len(cases) == len(LENGTHS) * len(DEPTHS) * 3
    for c in cases:
        assert len(c.ids) == c.length
        assert c.ids[0] == tokenizer.bos_token_id and tokenizer.bos_token_id not in c.ids[1:]
        assert tokenizer.eos_token_id not in c.ids  # the haystack reads as one running text
        sentence = needle.NEEDLE.format(key=c.key)
        ids, answer = needle._needle_pieces(tokenizer, c.key)
        assert c.answer_ids == answer == tokenizer.encode(f" {c.key}", add_special_tokens=False)
        assert c.ids[c.needle_at : c.needle_at + len(ids)] == ids
        assert tokenizer.decode(ids) == sentence
        assert tokenizer.decode(c.ids).endswith(sentence + tokenizer.decode(c.ids[c.needle_at + len(ids) :]))
        assert tokenizer.decode(c.ids).endswith(needle.QUESTION)
        haystack = c.length - 1 - len(ids) - len(tokenizer.encode(needle.QUESTION, add_special_tokens=False))
        assert c.needle_at - 1 == round(haystack * c.depth / 100)
    # a trial keeps its key and its haystack in every cell: the depth is the only thing that moves
    for trial in range(3):
        same = [c for c in cases if c.trial == trial]
        assert len({c.key for c in same}) == 1
        at_zero = {c.length: c for c in same if c.depth == 0}
        start = 1 + len(needle._needle_pieces(tokenizer, same[0].key)[0])
        assert at_zero[64].ids[start:40] == at_zero[256].ids[start:40]
    assert len({c.key for c in cases}) == 3


def test_same_seed_same_cases_other_seed_other_keys(cases, heldout, tokenizer):
    again = needle.build_cases(heldout, tokenizer, LENGTHS, DEPTHS, trials=3, seed=7)
    assert again == cases
    other = needle.build_cases(heldout, tokenizer, LENGTHS, DEPTHS, trials=3, seed=8)
    assert {c.key for c in other}.isdisjoint({c.key for c in cases})
    assert [c.ids for c in other] != [c.ids for c in cases]


def test_a_model_that_knows_the_key_scores_one_in_every_cell(cases, tokenizer):
    result = needle.score(_knows_the_key(tokenizer), cases)
    assert set(result) == {f"needle/L{n}/d{d}" for n in LENGTHS for d in DEPTHS} | {"needle/accuracy"}
    assert all(v == 1.0 for v in result.values())


def test_random_answers_score_about_zero(cases, tokenizer):
    rng = np.random.default_rng(0)
    result = needle.score(
        lambda prompts, n: [rng.integers(0, len(tokenizer), n).tolist() for _ in prompts], cases
    )
    assert result["needle/accuracy"] < 0.1 and all(0.0 <= v <= 1.0 for v in result.values())


def test_one_wrong_trial_in_three_is_two_thirds_in_its_cell(cases, tokenizer):
    knows = _knows_the_key(tokenizer)

    def once_wrong(prompts, n):
        out = knows(prompts, n)
        return [o if not (c.trial == 0 and c.length == 64 and c.depth == 50) else [0] * n
                for c, o in zip(cases, out, strict=True)]  # fmt: skip

    result = needle.score(once_wrong, cases)
    assert result["needle/L64/d50"] == pytest.approx(2 / 3)
    assert result["needle/L64/d25"] == 1.0
    assert result["needle/accuracy"] == pytest.approx(1 - 1 / len(cases))


def test_too_little_held_out_text_is_a_one_line_error(tmp_path, tokenizer, tokenizer_dir):
    docs = [tokenizer.encode(" It is a truth universally acknowledged.", add_special_tokens=False) + [128001]]
    folder = _shards(tmp_path / "tiny", docs, tokenizer_dir)
    with pytest.raises(needle.NeedleError, match="held-out text too short") as e:
        needle.build_cases(folder, tokenizer, [256], [50], trials=1)
    assert "\n" not in str(e.value) and str(folder) in str(e.value)
    with pytest.raises(needle.NeedleError, match="length 20 is too short"):
        needle.build_cases(folder, tokenizer, [20], [50], trials=1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from cpt.demo.tiny_model import make_tiny_llama

    folder = make_tiny_llama(
        tokenizer_dir, tmp_path_factory.mktemp("m") / "model", hidden=32, layers=2, heads=4
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(folder)


def test_a_tiny_llama_is_scored_in_training_with_default_lengths(tiny_model, heldout, tokenizer, monkeypatch):
    built = []
    original = needle.build_cases
    monkeypatch.setattr(needle, "build_cases", lambda *a, **k: built.append(a) or original(*a, **k))
    cfg = NeedleConfig(set="en_old", depths=[0, 50, 100], trials=2, seed=1)
    tiny_model.train()
    result = needle.in_training(tiny_model, tokenizer, cfg, heldout, SEQ_LEN, "cpu", pad_id=0)
    assert tiny_model.training  # eval mode for the check only
    assert set(result) == {f"needle/L{n}/d{d}" for n in LENGTHS for d in (0, 50, 100)} | {"needle/accuracy"}
    assert all(0.0 <= v <= 1.0 for v in result.values())
    again = needle.in_training(tiny_model, tokenizer, cfg, heldout, SEQ_LEN, "cpu", pad_id=0)
    assert again == result and len(built) == 1  # cases built once a run; greedy: the same answers
    # the generated ids are the model's greedy continuation
    case = needle.build_cases(heldout, tokenizer, [64], [50], trials=1, seed=1)[0]
    (out,) = needle.model_generate(tiny_model, "cpu")([case.ids], 3)
    assert len(out) == 3 and all(0 <= t < tiny_model.config.vocab_size for t in out)


def test_in_training_refuses_a_length_over_seq_len_and_leaves_out_too_short_ones(
    tiny_model, heldout, tokenizer
):
    with pytest.raises(needle.NeedleError, match="512 is longer than the stage's seq_len 256"):
        needle.in_training(tiny_model, tokenizer, NeedleConfig(lengths=[128, 512]), heldout, SEQ_LEN, "cpu")
    # seq_len 96: a quarter (24 tokens) cannot hold the needle and the question, so it is left out
    result = needle.in_training(
        tiny_model, tokenizer, NeedleConfig(depths=[50], trials=1), heldout, 96, "cpu"
    )
    assert set(result) == {"needle/L48/d50", "needle/L96/d50", "needle/accuracy"}
