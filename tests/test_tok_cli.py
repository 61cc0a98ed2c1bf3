"""`cpt-tok train | merge | report` as a user runs them, with a small English base trained here
(byte fallback, a stand-in for LLaMA's) and Chinese text from shared/data."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm

from conftest import REPO, shared_data
from cpt.shards import CLEAN_SCHEMA


def cpt_tok(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "cpt.tok.cli", *args], cwd=REPO, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_train_merge_report_extend_a_small_english_base_for_chinese(tmp_path):
    english = shared_data("english-text", "1342-0.txt")
    chinese_lines = shared_data("chinese-text", "pku_test.utf8").read_text(encoding="utf-8").splitlines()
    # Chinese training text as a clean output would hold it: Parquet shards with a text column
    rows = [
        {"id": str(i), "text": "\n".join(chinese_lines[i : i + 5]), "lang": "zh"} for i in range(0, 1500, 5)
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
    held_out_english = (
        shared_data("english-text", "3261.txt").read_text(encoding="utf-8").splitlines()[300:800]
    )
    assert all(base.encode(t) == merged.encode(t) for t in held_out_english)

    held_out = tmp_path / "msr.txt"
    msr = shared_data("chinese-text", "msr_test.utf8").read_text(encoding="utf-8").splitlines()[:300]
    held_out.write_text("\n".join(msr), encoding="utf-8")
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
