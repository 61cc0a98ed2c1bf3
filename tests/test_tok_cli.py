"""`cpt-tok train | merge | report` as a user runs them, with a small English base trained here
(byte fallback, a stand-in for LLaMA's) and Chinese text from tests/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from conftest import (
    CHINESE_LLAMA,
    CHINESE_TEXT,
    SENTENCEPIECE_BASE,
    chinese_paragraphs,
    cpt_tok,
    data_path,
    llama3_tokenizer,
)
from cpt.shards import CLEAN_SCHEMA


def test_train_merge_report_extend_a_small_english_base_for_chinese(tmp_path):
    english = data_path("english-text", "1342-0.txt")
    chinese_lines = chinese_paragraphs()[:1000]  # the rest is held out
    # Chinese training text as a clean output would hold it: Parquet shards with a text column
    rows = [
        {"id": str(i), "text": "\n".join(chinese_lines[i : i + 5]), "lang": "zh"}
        for i in range(0, len(chinese_lines), 5)
    ]
    shard = tmp_path / "clean" / "zh" / "000_00000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), shard)

    cpt_tok("train", "--input", str(english), "--vocab-size", "2000", "--output", str(tmp_path / "base"))
    cpt_tok(
        "train", "--input", str(tmp_path / "clean"), "--vocab-size", "5000", "--output", str(tmp_path / "zh")
    )
    assert json.loads((tmp_path / "zh" / "train.json").read_text())["byte_fallback"] is True
    out = cpt_tok(
        "merge",
        "--base",
        str(tmp_path / "base"),
        "--add",
        str(tmp_path / "zh"),
        "--output",
        str(tmp_path / "merged"),
    ).stdout
    assert "2,000 base +" in out

    base = spm.SentencePieceProcessor(model_file=str(tmp_path / "base" / "tokenizer.model"))
    merged = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))
    for i in range(2000):  # the base's pieces keep their ids
        assert merged.id_to_piece(i) == base.id_to_piece(i)
    held_out_english = data_path("english-text", "3261.txt").read_text(encoding="utf-8").splitlines()[300:800]
    assert all(base.encode(t) == merged.encode(t) for t in held_out_english)

    held_out = tmp_path / "held_out.txt"
    unseen = chinese_paragraphs()[1000:]
    held_out.write_text("\n".join(unseen), encoding="utf-8")
    report = cpt_tok(
        "report",
        "--tokenizer",
        str(tmp_path / "base"),
        "--tokenizer",
        str(tmp_path / "merged"),
        "--input",
        str(held_out),
        "--json",
        str(tmp_path / "report.json"),
    )
    figures = {r["tokenizer"]: r for r in json.loads((tmp_path / "report.json").read_text())}
    ratio = figures[str(tmp_path / "merged")]["tokens"] / figures[str(tmp_path / "base")]["tokens"]
    assert ratio <= 0.5, report.stdout


def test_bad_input_gives_one_line_errors(tmp_path):
    proc = cpt_tok(
        "train",
        "--input",
        str(tmp_path / "nothing"),
        "--vocab-size",
        "100",
        "--output",
        str(tmp_path / "o"),
        check=False,
    )
    assert proc.returncode == 2 and "nothing" in proc.stderr and "no such file" in proc.stderr
    proc = cpt_tok(
        "merge", "--base", str(tmp_path), "--add", str(tmp_path), "--output", str(tmp_path / "m"), check=False
    )
    assert proc.returncode == 2 and "tokenizer.model" in proc.stderr


def test_train_takes_trainer_options_with_set_and_the_old_option_spelling(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text(
        "".join(f"the {w} fox jumps over the lazy dog {i}\n" for i in range(300) for w in ("quick", "slow"))
    )
    train = ("train", "--input", str(text), "--vocab-size", "400", "--output")
    cpt_tok(
        *train, str(tmp_path / "a"), "--set", "hard_vocab_limit=false", "--option", "character_coverage=1.0"
    )
    info = json.loads((tmp_path / "a" / "train.json").read_text())
    assert info["hard_vocab_limit"] is False and info["character_coverage"] == 1.0
    proc = cpt_tok(*train, str(tmp_path / "b"), "--set", "split_digits=[x", check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "split_digits" in errors[0], proc.stderr
    assert "not valid YAML" in errors[0] and not (tmp_path / "b").exists()
    assert "--option" not in cpt_tok("train", "--help").stdout  # a hidden alias


@pytest.mark.slow
def test_init_embeddings_pads_to_64_keeps_old_rows_and_averages_new_ones(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    english = data_path("english-text", "1342-0.txt")
    chinese = data_path(*CHINESE_TEXT)
    cpt_tok("train", "--input", str(english), "--vocab-size", "1000", "--output", str(tmp_path / "base"))
    cpt_tok(
        "train",
        "--input",
        str(chinese),
        "--vocab-size",
        "4000",
        "--max-lines",
        "4000",
        "--output",
        str(tmp_path / "zh"),
    )
    cpt_tok(
        "merge",
        "--base",
        str(tmp_path / "base"),
        "--add",
        str(tmp_path / "zh"),
        "--output",
        str(tmp_path / "merged"),
    )
    base = spm.SentencePieceProcessor(model_file=str(tmp_path / "base" / "tokenizer.model"))
    merged = spm.SentencePieceProcessor(model_file=str(tmp_path / "merged" / "tokenizer.model"))

    for tied in (True, False):
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            tie_word_embeddings=tied,
        )
        model_dir, out = tmp_path / f"model_{tied}", tmp_path / f"out_{tied}"
        LlamaForCausalLM(config).save_pretrained(model_dir)
        before = AutoModelForCausalLM.from_pretrained(model_dir)
        cpt_tok(
            "init-embeddings",
            "--model",
            str(model_dir),
            "--base-tokenizer",
            str(tmp_path / "base"),
            "--tokenizer",
            str(tmp_path / "merged"),
            "--output",
            str(out),
        )
        after = AutoModelForCausalLM.from_pretrained(out)
        rows_in = after.get_input_embeddings().weight
        assert rows_in.shape[0] % 64 == 0 and rows_in.shape[0] >= merged.get_piece_size()
        assert torch.equal(rows_in[:1000], before.get_input_embeddings().weight)  # bit for bit
        new_id = next(
            i for i in range(1000, merged.get_piece_size()) if len(merged.id_to_piece(i).strip("▁")) >= 2
        )
        text = merged.id_to_piece(new_id).replace("▁", " ")
        ids = base.encode(text)
        if (
            len(ids) > 1
            and base.id_to_piece(ids[0]) == "▁"
            and not merged.id_to_piece(new_id).startswith("▁")
        ):
            ids = ids[1:]
        expected = before.get_input_embeddings().weight[ids].mean(dim=0)
        assert torch.allclose(rows_in[new_id], expected)
        if not tied:
            out_rows = after.get_output_embeddings().weight
            assert torch.equal(out_rows[:1000], before.get_output_embeddings().weight)
            assert torch.allclose(out_rows[new_id], before.get_output_embeddings().weight[ids].mean(dim=0))
        tok = AutoTokenizer.from_pretrained(out)
        batch = tok("今天天气很好 and a fine day", return_tensors="pt")
        assert after(**batch).logits.shape[-1] == rows_in.shape[0]
    wrong_base = cpt_tok(
        "init-embeddings",
        "--model",
        str(tmp_path / "model_True"),
        "--base-tokenizer",
        str(tmp_path / "zh"),
        "--tokenizer",
        str(tmp_path / "merged"),
        "--output",
        str(tmp_path / "bad"),
        check=False,
    )
    assert wrong_base.returncode == 2 and "not a merge of" in wrong_base.stderr


def test_tokenize_writes_memory_mapped_shards_tied_to_their_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from conftest import run_cli
    from cpt.tok.merge import merge
    from cpt.tokens import TokenShardError, TokenShards

    merge(
        data_path(*SENTENCEPIECE_BASE),
        data_path(*CHINESE_LLAMA),
        tmp_path / "merged",
    )
    texts = {
        "en": [
            p
            for p in data_path("english-text", "3261.txt").read_text(encoding="utf-8").split("\n\n")
            if p.strip()
        ][100:140],
        "zh": chinese_paragraphs()[:40],
    }
    for lang, docs in texts.items():
        rows = [{"id": f"{lang}{i}", "text": t, "lang": lang} for i, t in enumerate(docs)]
        path = tmp_path / "dedup" / lang / "000_00000.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), path)

    out = tmp_path / "tokens" / "web"
    proc = run_cli(
        "tokenize",
        "--input",
        str(tmp_path / "dedup"),
        "--tokenizer",
        str(tmp_path / "merged"),
        "--output",
        str(out),
        "--no-progress",
    )
    # two languages in: one token folder each, said in one line (a stage weighs them apart)
    assert "the input holds 2 languages (en, zh): one token folder each" in proc.stderr
    assert not (out / "tokens.json").exists() and proc.stdout.count("40 documents") == 2
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    for lang in ("en", "zh"):
        shards = TokenShards(out / lang, tmp_path / "merged")
        manifest = json.loads((out / lang / "tokens.json").read_text())
        assert manifest["source"] == f"web/{lang}" and manifest["labels"] == {"lang": lang}
        assert manifest["dtype"] == "uint16" and len(shards) == 40
        decoded = {tok.decode(shards.document(i)[:-1]) for i in range(len(shards))}
        assert decoded == set(texts[lang])
        assert all(shards.document(i)[-1] == tok.convert_tokens_to_ids("</s>") for i in range(len(shards)))
    # a stage source naming the run's folder takes both languages; `where` picks one
    from cpt.mix.plan import resolve
    from cpt.mix.stage import Source

    for where, langs in ((None, {"en", "zh"}), ("lang == zh", {"zh"})):
        files, _, _ = resolve(Source(name="web", path=str(out), weight=1.0, where=where), "sources[0]")
        assert {Path(f["path"]).parent.name for f in files} == langs

    other = tmp_path / "other"
    merge(
        data_path(*SENTENCEPIECE_BASE),
        data_path(*CHINESE_LLAMA),
        other,
        pieces="all",
    )
    import pytest

    with pytest.raises(TokenShardError, match="another tokenizer"):
        TokenShards(out / "zh", other)
    again = run_cli(
        "tokenize",
        "--input",
        str(tmp_path / "dedup"),
        "--tokenizer",
        str(tmp_path / "merged"),
        "--output",
        str(out),
        "--no-progress",
    )
    assert again.stdout == proc.stdout  # finished tasks are skipped; same shards

    # the same shards named as two inputs, one a glob: the same documents, the same token files
    both = tmp_path / "tokens" / "both"
    run_cli("tokenize", "--input", str(tmp_path / "dedup" / "en"), str(tmp_path / "d*" / "z?"),
            "--tokenizer", str(tmp_path / "merged"), "--output", str(both), "--no-progress")  # fmt: skip
    for lang in ("en", "zh"):
        ds = sorted(p.relative_to(out / lang) for p in (out / lang).glob("*.ds*"))
        assert ds and ds == sorted(p.relative_to(both / lang) for p in (both / lang).glob("*.ds*"))
        assert all((out / lang / f).read_bytes() == (both / lang / f).read_bytes() for f in ds)


# text that tests a tokenizer's front end: runs of spaces, spaces at either end, SentencePiece's own "▁"
# in the text, other whitespace, characters only byte fallback encodes, added tokens' text inside words,
# a word longer than the word cache keeps, and the empty text
HOSTILE = [
    "",
    " ",
    "   ",
    "a",
    "  two  spaces  ",
    " lead",
    "trail ",
    "x▁y ▁ ▁▁z▁",
    "é 😀 \x00 tab\there\r\n\u3000全角空格\u00a0nbsp",
    "</s> at the start, inside</s>words and <s>more<unk> at the end </s>",
    "<s",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ \U0010fffd",
    "a" * 200 + " " + "很长的中文" * 40,
    "中文 English 混合 text，标点。\n第二行",
]


@pytest.fixture(scope="module")
def merged_tokenizer(tmp_path_factory) -> str:
    """LLaMA's tokenizer with Chinese-LLaMA's pieces, as `cpt-tok merge` writes it (SentencePiece's front end)."""
    from cpt.tok.merge import merge

    folder = tmp_path_factory.mktemp("merged")
    merge(
        data_path(*SENTENCEPIECE_BASE),
        data_path(*CHINESE_LLAMA),
        folder / "tok",
    )
    return str(folder / "tok" / "tokenizer.json")


def real_texts(n: int) -> list[str]:
    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8").split("\n\n")
    chinese = chinese_paragraphs()
    return [t for t in english[:n] + chinese[:n] if t.strip()]


def library_ids(tokenizer_json: str, eos: str, texts: list[str]) -> list[list[int]]:
    """The tokenizers library's ids of each text, EOS appended as datatrove's DocumentTokenizer does."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tok = Tokenizer.from_file(tokenizer_json)
    tok.post_processor = TemplateProcessing(
        single="$A <EOS>", special_tokens=[("<EOS>", tok.token_to_id(eos))], pair=None
    )
    return [e.ids for e in tok.encode_batch(texts)]


def word_cache_ids(encoder, texts: list[str]) -> list[list[int]]:
    import numpy as np

    flat, lengths = encoder.encode(texts)
    return [part.tolist() for part in np.split(flat, np.cumsum(lengths)[:-1])] if texts else []


@pytest.mark.parametrize("limits", ["defaults", "tiny cache"])
def test_the_word_cache_gives_the_library_ids(merged_tokenizer, monkeypatch, limits):
    """The word cache (tokenize's encoder for SentencePiece-style tokenizers) gives, text for text, the ids
    the library gives on real English and Chinese and on hostile text, cold and warm, also when words
    cannot be kept (cache full, words too long)."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from cpt.tokens.wordcache import WordCacheEncoder

    if limits == "tiny cache":
        monkeypatch.setattr("cpt.tokens.wordcache.MAX_WORDS", 50)
        monkeypatch.setattr("cpt.tokens.wordcache.MAX_WORD_CHARS", 3)
    texts = real_texts(300) + HOSTILE
    expected = library_ids(merged_tokenizer, "</s>", texts)
    tok = Tokenizer.from_file(merged_tokenizer)
    tok.post_processor = TemplateProcessing(single="$A <EOS>", special_tokens=[("<EOS>", 2)], pair=None)
    encoder = WordCacheEncoder.of(tok, 2, "uint16")
    assert encoder is not None
    for order in (range(100), range(100, len(texts)), range(len(texts) - 1, -1, -1)):  # cold, warmer, warm
        got = word_cache_ids(encoder, [texts[i] for i in order])
        for i, ids in zip(order, got, strict=True):
            assert ids == expected[i], repr(texts[i][:80])
    assert encoder.checked and "_encode" not in vars(encoder)  # checked once, and still the word cache
    if limits == "tiny cache":
        assert len(encoder.cache) == 50 and all(len(w) <= 3 for w in encoder.cache)
    else:
        assert len(encoder.cache) > 1000 and all(len(w) <= 64 for w in encoder.cache)
    assert word_cache_ids(encoder, []) == []


def test_the_word_cache_serves_only_sentencepiece_front_ends(merged_tokenizer):
    """Any other tokenizer (Llama 3's byte-level BPE, another prepend scheme, BPE dropout) is left to the
    library; and a cache that gave other ids than the library on the first batch is dropped for it."""
    import json

    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    from cpt.tokens.wordcache import WordCacheEncoder

    llama3 = Tokenizer.from_file(str(llama3_tokenizer() / "tokenizer.json"))
    assert WordCacheEncoder.of(llama3, 128001, "uint32") is None
    config = json.loads(open(merged_tokenizer, encoding="utf-8").read())
    other = dict(config, pre_tokenizer={**config["pre_tokenizer"], "prepend_scheme": "first"})
    assert WordCacheEncoder.of(Tokenizer.from_str(json.dumps(other)), 2, "uint16") is None
    dropout = dict(config, model={**config["model"], "dropout": 0.1})
    assert WordCacheEncoder.of(Tokenizer.from_str(json.dumps(dropout)), 2, "uint16") is None

    tok = Tokenizer.from_file(merged_tokenizer)
    tok.post_processor = TemplateProcessing(single="$A <EOS>", special_tokens=[("<EOS>", 2)], pair=None)
    encoder = WordCacheEncoder.of(tok, 2, "uint16")
    encoder.cache["the"] = b"\x07\x00"  # a wrong entry: what a tokenizers release that changed would give
    texts = real_texts(50)
    assert word_cache_ids(encoder, texts) == library_ids(merged_tokenizer, "</s>", texts)
    assert word_cache_ids(encoder, texts[::-1]) == library_ids(merged_tokenizer, "</s>", texts[::-1])
    assert vars(encoder)["_encode"] == encoder._library  # the library encodes from then on


@pytest.mark.parametrize("which", ["llama-3.2 (library)", "merged LLaMA (word cache)"])
def test_tokenize_step_writes_the_same_files_as_datatrove_document_tokenizer(
    tmp_path, monkeypatch, merged_tokenizer, which
):
    from datatrove.data import Document
    from datatrove.pipeline.tokens import DocumentTokenizer

    from cpt.tokens import document_tokenizer

    if which.startswith("llama-3.2"):
        tokenizer, eos = str(llama3_tokenizer() / "tokenizer.json"), "<|end_of_text|>"
    else:
        tokenizer, eos = merged_tokenizer, "</s>"
    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8").split("\n\n")
    chinese = chinese_paragraphs()
    texts = [t for t in english[:400] + chinese[:400] if t.strip()] + HOSTILE

    def docs():
        return (Document(text=t, id=str(i)) for i, t in enumerate(texts))

    monkeypatch.setattr("cpt.tokens.ENCODE_CHUNK", 128)  # several chunks, the last one short
    ours = document_tokenizer(str(tmp_path / "ours"), tokenizer, eos)
    assert (ours.word_encoder is None) == which.startswith("llama-3.2")
    theirs = DocumentTokenizer(
        str(tmp_path / "theirs"),
        tokenizer,
        eos_token=eos,
        shuffle_documents=False,
        batch_size=128,
    )
    for step in (ours, theirs):
        step.run(docs(), rank=0, world_size=1)  # not a generator: it writes the files and returns
    if ours.word_encoder:  # checked against the library on the first batch, and kept
        assert ours.word_encoder.checked and "_encode" not in vars(ours.word_encoder)
    names = sorted(p.name for p in (tmp_path / "theirs").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ours").iterdir()) and len(names) >= 2
    for name in names:
        assert (tmp_path / "ours" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name
    mine, datatroves = ours.stats["tokens"], theirs.stats["tokens"]  # merged a chunk at a time: the same
    assert (mine.total, mine.n, mine.min, mine.max) == (
        datatroves.total,
        datatroves.n,
        datatroves.min,
        datatroves.max,
    )
    assert datatroves.total > 10_000 and datatroves.max > datatroves.min
    assert math.isclose(mine.mean, datatroves.mean) and math.isclose(mine.variance, datatroves.variance)
    # chunks cut by characters too (a few paragraphs each), and by a few documents
    monkeypatch.setattr("cpt.tokens.CHUNK_CHARS", 5000)
    monkeypatch.setattr("cpt.tokens.ENCODE_CHUNK", 7)
    small = document_tokenizer(str(tmp_path / "small"), tokenizer, eos)
    small.run(docs(), rank=0, world_size=1)
    for name in names:
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "theirs" / name).read_bytes(), name


def test_split_tokenizer_writes_each_value_the_files_of_its_own_run(tmp_path):
    """One pass over the input gives every --split-by folder the files that datatrove's DocumentTokenizer
    writes for that value's documents alone (the old way: one full read of the input per value)."""
    from datatrove.data import Document
    from datatrove.pipeline.tokens import DocumentTokenizer

    from cpt.tokens import SplitDocumentTokenizer

    tokenizer = str(llama3_tokenizer() / "tokenizer.json")
    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8").split("\n\n")
    texts = [t for t in english[:600] if t.strip()]
    topics = ["science", "sports", None, "arts"]  # None: no topic, the `other` folder
    never = "unused"  # a value of the run with no document in this task: an empty file, as its own run

    def docs():
        for i, t in enumerate(texts):
            meta = {"topic": topics[i % 3 if i < 400 else 3]} if topics[i % 3] else {}
            yield Document(text=t, id=str(i), metadata=meta)

    values = ["science", "sports", "other", "arts", never]
    ours = SplitDocumentTokenizer(
        "topic", {v: str(tmp_path / "ours" / v) for v in values}, tokenizer, "<|end_of_text|>"
    )
    ours.batch_size = 64
    ours.run(docs(), rank=3, world_size=4)
    for value in values:
        theirs = DocumentTokenizer(
            str(tmp_path / "theirs" / value), tokenizer, eos_token="<|end_of_text|>", shuffle_documents=False
        )
        own = (d for d in docs() if d.metadata.get("topic", "other") == value)
        theirs.run(own, rank=3, world_size=4)
        names = sorted(p.name for p in (tmp_path / "theirs" / value).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "ours" / value).iterdir()) and names, value
        for name in names:
            mine, ref = tmp_path / "ours" / value / name, tmp_path / "theirs" / value / name
            assert mine.read_bytes() == ref.read_bytes(), (value, name)
    assert (tmp_path / "ours" / never / "00003_unshuffled.ds").stat().st_size == 0
    assert (tmp_path / "ours" / "arts" / "00003_unshuffled.ds").stat().st_size > 1000


def test_tokenize_split_by_a_column_or_a_metadata_field_reads_the_input_once(tmp_path):
    from conftest import run_cli
    from cpt.tokens import TokenShards

    tokenizer = llama3_tokenizer()
    english = [p for p in data_path("english-text", "3261.txt").read_text(encoding="utf-8").split("\n\n")]
    chinese = chinese_paragraphs()
    docs = [("en", t) for t in english[100:160] if t.strip()] + [("zh", t) for t in chinese[:50] if t.strip()]
    rows = []
    for i, (lang, text) in enumerate(docs):
        topic = ["news", "Sci/Tech", None][i % 3]
        meta = {f.name: None for f in CLEAN_SCHEMA.field("metadata").type}
        meta["topic"] = topic
        rows.append({"id": str(i), "text": text, "lang": lang, "metadata": meta})
    for part in range(2):
        path = tmp_path / "scored" / f"00{part}.parquet"
        path.parent.mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows[part::2], schema=CLEAN_SCHEMA), path)

    expected = {
        "lang": {"en": sum(d[0] == "en" for d in docs), "zh": sum(d[0] == "zh" for d in docs)},
        "topic": {
            v: sum(1 for i in range(len(docs)) if i % 3 == k)
            for k, v in enumerate(["news", "Sci/Tech", "other"])
        },
    }
    for key, counts in expected.items():
        out = tmp_path / f"by_{key}"
        run_cli("tokenize", "--input", str(tmp_path / "scored"), "--tokenizer", str(tokenizer),
                "--output", str(out), "--split-by", key, "--no-progress")  # fmt: skip
        folders = {p.name for p in out.iterdir() if p.name != "report"}
        assert folders == {"en", "zh"} if key == "lang" else {"news", "Sci%2FTech", "other"}
        for value, n in counts.items():
            folder = out / ("Sci%2FTech" if value == "Sci/Tech" else value)
            manifest = json.loads((folder / "tokens.json").read_text())
            assert manifest["labels"] == {key: value} and manifest["documents"] == n, (key, value)
            assert len(manifest["files"]) == 2  # one a task
            assert len(TokenShards(folder, tokenizer)) == n
        # one tokenizing stage read the input: its reader counted every document once
        stats = json.loads((out / "report" / "logs" / "tokenize" / "stats.json").read_text())
        assert stats[0]["stats"]["documents"]["total"] == len(docs)


def test_the_tokenizing_step_takes_over_the_tokenizer_prepare_loaded(tmp_path, merged_tokenizer):
    """`run.py tokenize` loads the tokenizer once per process: its step takes over the one `prepare` loaded
    to check it (a second load of a LLaMA-sized tokenizer.json is a tenth of a second), with EOS set."""
    from cpt import tokens
    from pipelines.tokenization import prepare

    rows = [{"id": str(i), "text": t, "lang": "x"} for i, t in enumerate(real_texts(20))]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), tmp_path / "in" / "000.parquet")
    run = prepare(tmp_path / "in", merged_tokenizer, tmp_path / "out", workers=1, progress=False)
    (loaded,) = tokens._LOADED.values()
    step = run.executors[0].pipeline[1]
    assert step.tokenizer is loaded and not tokens._LOADED  # taken over, once
    assert step.tokenizer.encode("a").ids[-1] == loaded.token_to_id("</s>")
    run.executors[-1].run()
    shards = tokens.TokenShards(tmp_path / "out", merged_tokenizer)
    assert len(shards) == len(rows) and shards.document(0)[-1] == loaded.token_to_id("</s>")
