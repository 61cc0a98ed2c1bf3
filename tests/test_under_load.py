"""The same command on the same input gives the same output however busy the machine is.

clean (on the real WARCs of tests/data/warc, four tasks), then dedup and tokenize on its output, each
run once on a quiet machine and once while every core is kept busy by CPU-bound processes that the test
starts and stops itself: the documents (id and text), the funnels and the token shards are identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from conftest import CHINESE_LLAMA, SENTENCEPIECE_BASE, busy_cores, data_path, run_cli

pytestmark = pytest.mark.slow


def documents(out: Path) -> list[dict]:
    frame = pl.read_parquet(out / "*" / "*.parquet")
    return sorted(frame.select("id", "text", "lang", "url").to_dicts(), key=lambda r: r["id"])


def funnel(out: Path) -> dict:
    return json.loads((out / "report" / "funnel.json").read_text(encoding="utf-8"))


def token_files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.ds*"))}


def manifests(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.rglob("tokens.json"))}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from cpt.tok.merge import merge

    folder = tmp_path_factory.mktemp("tok") / "merged"
    merge(
        data_path(*SENTENCEPIECE_BASE),
        data_path(*CHINESE_LLAMA),
        folder,
    )
    return folder


def run_chain(root: Path, warcs: Path, tokenizer: Path) -> Path:
    run_cli("clean", "--input", str(warcs), "--output", str(root / "clean"), "--tasks", "4", "--no-progress")
    run_cli("dedup", "--input", str(root / "clean"), "--output", str(root / "dedup"), "--no-progress")
    run_cli("tokenize", "--input", str(root / "dedup"), "--tokenizer", str(tokenizer),
            "--output", str(root / "tokens"), "--no-progress")  # fmt: skip
    return root


def test_clean_dedup_and_tokenize_give_the_same_output_on_a_busy_machine(tmp_path, tokenizer):
    warcs = data_path("warc")
    quiet = run_chain(tmp_path / "quiet", warcs, tokenizer)
    with busy_cores(per_core=1) as load:  # a CPU-bound process a core, beside the run
        busy = run_chain(tmp_path / "busy", warcs, tokenizer)
    assert load.processes >= 2

    extract = next(s for s in funnel(quiet / "clean")["steps"] if s["step"] == "extract")
    assert extract["docs_in"] > 100 and "timeout" not in extract["removed"]
    for stage in ("clean", "dedup"):
        assert documents(busy / stage) == documents(quiet / stage), stage
        assert funnel(busy / stage) == funnel(quiet / stage), stage
    assert len(documents(quiet / "dedup")) > 15  # 18 of the WARCs in tests/data
    assert token_files(busy / "tokens") == token_files(quiet / "tokens")
    assert {"en/tokens.json", "zh/tokens.json"} <= set(manifests(quiet / "tokens"))  # one folder a language
    assert manifests(busy / "tokens") == manifests(quiet / "tokens")
