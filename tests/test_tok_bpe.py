"""Byte-level BPE extension (Llama 3, Qwen): `cpt-tok train --model-type byte-bpe`, `merge` and
`init-embeddings` on the real Llama 3.2 tokenizer and on a GPT-2/Qwen-style base trained here, and the
merged tokenizer through tokenize, cpt-mix build and three training steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CHINESE_TEXT, REPO, SENTENCEPIECE_BASE, cpt_tok, data_path, llama3_tokenizer, run_cli
from cpt.shards import CLEAN_SCHEMA

NEW_TOKENS = 3000
HARD_TEXTS = [
    "Hello, world!",
    "  leading spaces",
    "trailing spaces   ",
    "repeated    spaces\tand\ttabs\n\n\nnew lines",
    "中华人民共和国成立了。",
    "mixed 中文 and English, 2024年10月1日, “引号”",
    "emoji 👍🏽 👨‍👩‍👧 🇨🇳",
    "\ufffd replacement, \x00 nul, \x7f del, \u0080 and \uffff at the edges of UTF-8",
    "four bytes 𝔘𝔫𝔦 and combining e\u0301",
    "",
    " ",
]


def encoder(folder: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def ids(tok, text: str, special: bool = False) -> list[int]:
    return tok.encode(text, add_special_tokens=special).ids


@pytest.fixture(scope="module")
def chinese(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("zh") / "zh.utf8"
    path.write_text(data_path(*CHINESE_TEXT).read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def llama3_merged(tmp_path_factory, chinese) -> tuple[Path, Path, Path]:
    """(base, trained, merged) for the real Llama 3.2 tokenizer, extended on the Chinese test text."""
    base = llama3_tokenizer()
    root = tmp_path_factory.mktemp("llama3")
    cpt_tok("train", "--input", str(chinese), "--model-type", "byte-bpe", "--base", str(base),
            "--new-tokens", str(NEW_TOKENS), "--output", str(root / "new"))  # fmt: skip
    proc = cpt_tok("merge", "--base", str(base), "--add", str(root / "new"), "--output", str(root / "merged"))
    assert f"128,257 base + {NEW_TOKENS:,} added" in proc.stdout
    return base, root / "new", root / "merged"


def code_text() -> str:
    """This project's own Python, less the lines that hold Chinese examples."""
    files = sorted((REPO / "cpt").rglob("*.py"))
    return "\n".join(
        line for p in files for line in p.read_text(encoding="utf-8").splitlines() if line.isascii()
    )


def assert_extends(base: Path, merged: Path, english: list[str], chinese: str, max_ratio: float) -> None:
    """English (and code) encodes to the base's ids, Chinese to fewer, every text round-trips exactly,
    special tokens keep their ids, and the new ids follow the base's without a gap."""
    old, new = encoder(base), encoder(merged)
    for text in english:
        assert ids(new, text) == ids(old, text)
        assert ids(new, text, special=True) == ids(old, text, special=True)
    zh_old, zh_new = ids(old, chinese), ids(new, chinese)
    assert len(zh_new) <= max_ratio * len(zh_old)
    for text in [*HARD_TEXTS, chinese[:5000], english[0][:5000]]:
        back = new.decode(ids(new, text), skip_special_tokens=False)
        assert back == old.decode(
            ids(old, text), skip_special_tokens=False
        )  # a normalizer (NFC) as the base's
        assert back == text or old.normalizer is not None
    base_json = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    merged_json = json.loads((merged / "tokenizer.json").read_text(encoding="utf-8"))
    assert merged_json["added_tokens"] == base_json["added_tokens"]  # never added tokens for new words
    for special in base_json["added_tokens"]:
        assert new.token_to_id(special["content"]) == special["id"]
        assert new.id_to_token(special["id"]) == special["content"]
    old_vocab, new_vocab = old.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    added = sorted(i for t, i in new_vocab.items() if t not in old_vocab)
    assert added == list(range(len(old_vocab), len(new_vocab)))
    assert base_json["model"]["merges"] == merged_json["model"]["merges"][: len(base_json["model"]["merges"])]


def test_merged_llama3_keeps_english_and_code_ids_and_needs_fewer_chinese_tokens(llama3_merged, chinese):
    base, _, merged = llama3_merged
    novels = [data_path("english-text", n).read_text(encoding="utf-8") for n in ("1342-0.txt", "3261.txt")]
    assert_extends(base, merged, [*novels, code_text()], chinese.read_text(encoding="utf-8"), 0.85)
    for name in ("tokenizer_config.json",):  # kept as the base has it, chat template included
        assert (merged / name).read_bytes() == (base / name).read_bytes()


def test_merged_llama3_loads_with_auto_tokenizer_and_encodes_as_tokenizers_does(llama3_merged):
    from transformers import AutoTokenizer

    base, _, merged = llama3_merged
    tok, old = AutoTokenizer.from_pretrained(merged), AutoTokenizer.from_pretrained(base)
    assert len(tok) == len(old) + NEW_TOKENS
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
        old.bos_token_id,
        old.eos_token_id,
        old.pad_token_id,
    )
    text = "mixed 中文 and English “引号” 👍🏽"
    assert tok(text)["input_ids"] == [old.bos_token_id, *ids(encoder(merged), text)]
    assert (
        tok.decode(tok(text)["input_ids"], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        == text
    )


def test_ignore_merges_base_is_extended_the_same_way(llama3_merged, chinese, tmp_path):
    """Meta's own Llama 3 files set `ignore_merges` (a pre-token that is a token is not merged)."""
    base, new, _ = llama3_merged
    data = json.loads((base / "tokenizer.json").read_text(encoding="utf-8"))
    data["model"]["ignore_merges"] = True
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    cpt_tok(
        "merge", "--base", str(tmp_path / "base"), "--add", str(new), "--output", str(tmp_path / "merged")
    )
    merged = json.loads((tmp_path / "merged" / "tokenizer.json").read_text(encoding="utf-8"))
    assert merged["model"]["ignore_merges"] is True
    novel = data_path("english-text", "3261.txt").read_text(encoding="utf-8")
    zh = chinese.read_text(encoding="utf-8")
    assert_extends(tmp_path / "base", tmp_path / "merged", [novel, code_text()], zh, 0.85)


@pytest.fixture(scope="module")
def small_base(tmp_path_factory) -> Path:
    """A GPT-2/Qwen-style byte-level BPE trained here on English: NFC, GPT-2's regex, no ignore_merges,
    special tokens after the regular ones (as Qwen's), a chat template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(english, trainer)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    folder = tmp_path_factory.mktemp("small") / "base"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def small_merged(small_base, chinese) -> Path:
    root = small_base.parent
    cpt_tok("train", "--input", str(chinese), "--model-type", "byte-bpe", "--base", str(small_base),
            "--new-tokens", "400", "--output", str(root / "new"))  # fmt: skip
    cpt_tok("merge", "--base", str(small_base), "--add", str(root / "new"), "--output", str(root / "merged"))
    return root / "merged"


def test_a_gpt2_style_base_without_ignore_merges_is_extended_with_its_chat_template(
    small_base, small_merged, chinese
):
    from transformers import AutoTokenizer

    novel = data_path("english-text", "3261.txt").read_text(encoding="utf-8")
    assert_extends(small_base, small_merged, [novel, code_text()], chinese.read_text(encoding="utf-8"), 0.9)
    assert json.loads((small_merged / "tokenizer.json").read_text())["model"]["ignore_merges"] is False
    old, new = AutoTokenizer.from_pretrained(small_base), AutoTokenizer.from_pretrained(small_merged)
    chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Well, sir."}]
    assert new.apply_chat_template(chat, tokenize=True) == old.apply_chat_template(chat, tokenize=True)
    assert len(new) == len(old) + 400 and new.eos_token_id == old.eos_token_id


def test_bad_byte_level_input_gives_one_line_errors(small_base, small_merged, tmp_path):
    proc = cpt_tok("train", "--input", str(small_base), "--model-type", "byte-bpe", "--new-tokens", "5",
                   "--output", str(tmp_path / "x"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "--base" in proc.stderr and len(proc.stderr.splitlines()) == 1
    converted = tmp_path / "sp" / "tokenizer.json"  # a SentencePiece conversion: BPE but not byte-level
    converted.parent.mkdir()
    data = json.loads((small_base / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {
        "type": "Metaspace",
        "replacement": "▁",
        "prepend_scheme": "first",
        "split": True,
    }
    converted.write_text(json.dumps(data))
    proc = cpt_tok("merge", "--base", str(converted.parent), "--add", str(small_merged),
                   "--output", str(tmp_path / "m"), check=False)  # fmt: skip
    assert proc.returncode == 2 and "not a byte-level BPE" in proc.stderr and str(converted) in proc.stderr
    assert not (tmp_path / "m").exists()
    proc = cpt_tok("merge", "--base", str(data_path(*SENTENCEPIECE_BASE)), "--add",
                   str(small_merged), "--output", str(tmp_path / "m"), "--new-tokens", "3", check=False)  # fmt: skip
    assert proc.returncode == 2 and "byte-level" in proc.stderr and not (tmp_path / "m").exists()


def _rows(model_dir: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return model, model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()


def _tiny_llama(tokenizer: Path, output: Path, rows: int, tied: bool) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=rows, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(output)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (output / name).write_bytes((tokenizer / name).read_bytes())
    return output


@pytest.mark.parametrize("tied", [False, True])
def test_init_embeddings_by_token_id_writes_spare_rows_in_place_or_grows(
    small_base, small_merged, tmp_path, tied
):
    import torch

    old_tok, new_tok = encoder(small_base), encoder(small_merged)
    base_n, merged_n = old_tok.get_vocab_size(), new_tok.get_vocab_size()
    # untied: Qwen's layout, more rows than tokens (the new ids fall inside them); tied: exactly as many
    rows = merged_n + 37 if not tied else base_n
    model_dir = _tiny_llama(small_base, tmp_path / "model", rows, tied)
    _, old_in, old_out = _rows(model_dir)
    proc = cpt_tok("init-embeddings", "--model", str(model_dir), "--base-tokenizer", str(small_base),
                   "--tokenizer", str(small_merged), "--output", str(tmp_path / "out"))  # fmt: skip
    model, new_in, new_out = _rows(tmp_path / "out")
    expected_rows = rows if not tied else -(-merged_n // 64) * 64
    assert new_in.shape[0] == expected_rows == model.config.vocab_size and f"{expected_rows:,}" in proc.stdout
    assert torch.equal(new_in[:base_n], old_in[:base_n])  # base rows bit for bit
    for i in range(base_n, merged_n):
        parts = [t.id for t in old_tok.model.tokenize(new_tok.id_to_token(i))]
        assert len(parts) >= 2 and all(p < base_n for p in parts)
        assert torch.allclose(new_in[i], old_in[parts].mean(dim=0), atol=1e-6)
        if not tied:
            assert torch.allclose(new_out[i], old_out[parts].mean(dim=0), atol=1e-6)
    if tied:
        assert model.config.tie_word_embeddings and new_out.data_ptr() == new_in.data_ptr()
        assert torch.allclose(
            new_in[merged_n:], old_in[:base_n].mean(dim=0).expand(expected_rows - merged_n, -1)
        )
    else:
        assert torch.equal(new_in[merged_n:], old_in[merged_n:])  # spare rows past the new ids: untouched
        assert torch.equal(new_out[:base_n], old_out[:base_n]) and torch.equal(
            new_out[merged_n:], old_out[merged_n:]
        )
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (
        small_merged / "tokenizer.json"
    ).read_bytes()


@pytest.mark.slow
def test_train_merge_init_tokenize_mix_and_train_three_steps(small_base, small_merged, chinese, tmp_path):
    from cpt.report.collect import read_metrics
    from trainer_setup import run_train

    model = _tiny_llama(small_base, tmp_path / "base_model", encoder(small_base).get_vocab_size(), False)
    cpt_tok("init-embeddings", "--model", str(model), "--base-tokenizer", str(small_base),
            "--tokenizer", str(small_merged), "--output", str(tmp_path / "model"))  # fmt: skip
    texts = {
        "zh": chinese.read_text(encoding="utf-8").splitlines()[:200],
        "en": [p for p in data_path("english-text", "3261.txt").read_text().split("\n\n") if p.strip()][:200],
    }
    for lang, docs in texts.items():
        rows = [{"id": f"{lang}{i}", "text": t, "lang": lang} for i, t in enumerate(docs)]
        (tmp_path / "clean" / lang).mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), tmp_path / "clean" / lang / "0.parquet"
        )
        run_cli("tokenize", "--input", str(tmp_path / "clean" / lang), "--tokenizer", str(tmp_path / "model"),
                "--output", str(tmp_path / "tokens" / f"{lang}_web"), "--no-progress")  # fmt: skip
    manifest = json.loads((tmp_path / "tokens" / "zh_web" / "tokens.json").read_text())
    eos = encoder(small_merged).token_to_id("<|endoftext|>")  # the tokenizer's own, from its config
    assert manifest["dtype"] == "uint16" and manifest["documents"] == 200
    stage = tmp_path / "stage.yaml"
    stage.write_text(f"""
name: zh
seq_len: 64
tokens: {64 * 2 * 3}
seed: 1
sources:
  - {{name: zh_web, path: {tmp_path / "tokens" / "zh_web"}, weight: 1.0}}
replay:
  share: 0.25
  sources:
    - {{name: en_web, path: {tmp_path / "tokens" / "en_web"}}}
""")
    proc = subprocess.run([sys.executable, "-m", "cpt.mix.cli", "build", str(stage), "--output",
                           str(tmp_path / "mix")], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = tmp_path / "train.yaml"
    config.write_text(f"""
model: {{path: {tmp_path / "model"}}}
data: {{micro_batch_size: 2, gradient_accumulation: 1, workers: 0}}
optim: {{lr: 1.0e-3}}
deepspeed: {{zero_stage: 2, bf16: false}}
eval: {{every: 0}}
checkpoint: {{every: 100, keep: 1}}
""")
    run_train({"manifest": tmp_path / "mix" / "manifest.json", "config": config}, tmp_path / "run", ranks=1)
    metrics = read_metrics(tmp_path / "run")
    assert sorted(metrics) == [1, 2, 3] and all(m["loss"] == m["loss"] for m in metrics.values())
    from cpt.tokens import TokenShards

    shards = TokenShards(tmp_path / "tokens" / "zh_web", tmp_path / "model")
    assert all(shards.document(i)[-1] == eos for i in range(len(shards)))


def test_merged_llama3_gives_uint32_shards_that_cpt_mix_and_the_loader_read(llama3_merged, chinese, tmp_path):
    from transformers import AutoTokenizer

    from cpt.data import PackedLoader
    from cpt.manifest import read_stage_manifest
    from cpt.tokens import TokenShards

    _, _, merged = llama3_merged
    docs = chinese.read_text(encoding="utf-8").splitlines()[:60]
    rows = [{"id": f"zh{i}", "text": t, "lang": "zh"} for i, t in enumerate(docs)]
    (tmp_path / "clean").mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), tmp_path / "clean" / "0.parquet")
    out = tmp_path / "tokens" / "zh_web"
    run_cli("tokenize", "--input", str(tmp_path / "clean"), "--tokenizer", str(merged), "--output", str(out),
            "--no-progress")  # fmt: skip
    manifest = json.loads((out / "tokens.json").read_text())
    assert manifest["dtype"] == "uint32" and manifest["documents"] == 60
    shards, tok = TokenShards(out, merged), AutoTokenizer.from_pretrained(merged)
    documents = [shards.document(i) for i in range(len(shards))]
    assert max(int(d.max()) for d in documents) >= 128_257  # new ids above 65,535 survive the shard
    assert all(int(d[-1]) == tok.convert_tokens_to_ids("<|end_of_text|>") for d in documents)  # its own EOS
    decoded = {tok.decode(d[:-1], clean_up_tokenization_spaces=False) for d in documents}
    assert decoded == set(docs)
    stage = tmp_path / "stage.yaml"
    stage.write_text(f"name: zh\nseq_len: 128\ntokens: 1024\nseed: 1\nsources:\n"
                     f"  - {{name: zh_web, path: {out}, weight: 1.0}}\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "cpt.mix.cli", "build", str(stage), "--output",
                           str(tmp_path / "mix")], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    batch = next(iter(PackedLoader(read_stage_manifest(tmp_path / "mix" / "manifest.json"), batch_size=2)))
    ids_seen = batch["input_ids"].flatten().tolist()
    assert max(ids_seen) >= 128_257 and len(ids_seen) == 256
