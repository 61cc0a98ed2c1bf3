"""`cpt-mix build`: stage validation, shares, epochs, tokenizers and the manifest hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from cpt.tokens import write_manifest


def token_folder(path, tokens: int, tokenizer, docs: int = 10, seed: int = 0):
    """A token-shard folder as `run.py tokenize` leaves it."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rng.integers(3, 1000, tokens, dtype=np.uint16).tofile(path / "00000_unshuffled.ds")
    ends = np.linspace(tokens / docs, tokens, docs).astype(np.uint64)
    ends.tofile(path / "00000_unshuffled.ds.index")
    write_manifest(path, path.name, tokenizer, 2)
    return path


@pytest.fixture
def shards(tmp_path):
    tok = tmp_path / "tok" / "tokenizer.json"
    tok.parent.mkdir()
    tok.write_text('{"model": "a"}')
    other = tmp_path / "tok2" / "tokenizer.json"
    other.parent.mkdir()
    other.write_text('{"model": "b"}')
    return {
        "zh": token_folder(tmp_path / "tokens" / "zh", 60_000, tok),
        "en": token_folder(tmp_path / "tokens" / "en", 40_000, tok, seed=1),
        "old": token_folder(tmp_path / "tokens" / "old", 50_000, tok, seed=2),
        "alien": token_folder(tmp_path / "tokens" / "alien", 50_000, other, seed=3),
    }


def cpt_mix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpt.mix.cli", *args], cwd=REPO, capture_output=True, text=True
    )


def write_stage(tmp_path, text: str):
    path = tmp_path / "stage.yaml"
    path.write_text(text)
    return path


STAGE = """
name: stage2
seq_len: 2048
tokens: 100000
seed: 7
sources:
  - {{name: zh_web, path: {zh}, weight: 3}}
  - {{name: en_web, path: {en}, weight: 1}}
replay:
  share: 0.25
  sources:
    - {{name: general, path: {old}}}
"""


def test_shares_epochs_and_a_stable_manifest_hash(tmp_path, shards):
    stage = write_stage(tmp_path, STAGE.format(**shards))
    out1, out2 = tmp_path / "m1", tmp_path / "m2"
    proc = cpt_mix("build", str(stage), "--output", str(out1))
    assert proc.returncode == 0, proc.stderr
    assert cpt_mix("build", str(stage), "--output", str(out2)).returncode == 0
    m1 = json.loads((out1 / "manifest.json").read_text())
    assert m1["manifest_hash"] == json.loads((out2 / "manifest.json").read_text())["manifest_hash"]
    used = {s["name"]: s["tokens_used"] for s in m1["sources"]}
    assert used == {"zh_web": 56_250, "en_web": 18_750, "general": 25_000}  # 75% split 3:1, 25% replay
    assert sum(s["share"] for s in m1["sources"]) == pytest.approx(1.0)
    zh = next(s for s in m1["sources"] if s["name"] == "zh_web")
    assert zh["epochs"] == pytest.approx(56_250 / 60_000) and zh["files"][0]["sha256"]
    assert "zh_web" in proc.stdout and "manifest" in proc.stdout


def test_refusals_are_one_line_errors_naming_the_problem(tmp_path, shards):
    cases = {
        "weight: 0": ("weight: 3", "weight: 0", "sources[0].weight: must be > 0"),
        "unknown key": ("seed: 7", "seed: 7\nsede: 1", "sede: unknown key"),
        "missing shards": (str(shards["en"]), str(tmp_path / "nowhere"), "no token shards"),
        "other tokenizer": (str(shards["en"]), str(shards["alien"]), "different tokenizers"),
        "too many epochs": ("tokens: 100000", "tokens: 1000000", "over its max_epochs"),
    }
    for name, (old, new, message) in cases.items():
        stage = write_stage(tmp_path, STAGE.format(**shards).replace(old, new, 1))
        proc = cpt_mix("build", str(stage), "--dry-run")
        assert proc.returncode == 2, name
        assert message in proc.stderr and proc.stderr.count("\n") <= 1 + (name == "unknown key"), (
            name,
            proc.stderr,
        )


def test_warnings_for_many_epochs_and_little_replay(tmp_path, shards):
    text = (
        STAGE.format(**shards)
        .replace("tokens: 100000", "tokens: 400000")
        .replace("share: 0.25", "share: 0.02")
    )
    text = text.replace("weight: 3}", "weight: 3, max_epochs: 10}").replace(
        "weight: 1}", "weight: 1, max_epochs: 10}"
    )
    proc = cpt_mix("build", str(write_stage(tmp_path, text)), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "zh_web repeats" in proc.stdout and "replay share 2% is below 5%" in proc.stdout


def test_shipped_stages_validate_plan_and_stream(tmp_path):
    """Every mixes/*.yaml loads; built over shards the size of the demo's, each plans and streams."""
    from cpt.data import PackedLoader
    from cpt.mix.plan import plan
    from cpt.mix.stage import load_stage

    files = sorted((REPO / "mixes").glob("*.yaml"))
    assert {f.stem for f in files} == {"stage1", "stage2", "stage3", "anneal", "long_context"}
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": "demo"}')
    demo_sizes = {"zh_web": 8_000, "en_web": 40_000, "instruct": 27_000, "math": 20_000}  # make demo's
    folders = {name: token_folder(tmp_path / name, n, tok, docs=40) for name, n in demo_sizes.items()}
    # `where` sources pick labelled folders under a parent (`tokenize --split-by topic`)
    topics = tmp_path / "topics"
    for topic in ("science", "tech", "food"):
        token_folder(topics / topic, 12_000, tok, docs=20)
        data = json.loads((topics / topic / "tokens.json").read_text())
        (topics / topic / "tokens.json").write_text(json.dumps({**data, "labels": {"topic": topic}}))
    folders["topics"] = topics
    for f in files:
        stage = load_stage(f)
        # every stage replays old-domain data
        assert stage.replay.share >= 0.05, f.name
        for s in [*stage.sources, *stage.replay.sources]:
            s.path = str(folders[Path(s.path).name])  # runs/demo/tokens/NAME: the demo's folder NAME
        manifest = plan(stage, f.name)
        for s in manifest["sources"]:
            if s["name"] == "science_web":  # science and tech, not food
                assert {Path(f["path"]).parent.name for f in s["files"]} == {"science", "tech"}
        # anneal.yaml anneals (Llama 3); a source without min_tokens has a manifest entry as before
        assert manifest.get("anneal_tokens") == (16_000 if f.stem == "anneal" else None), f.name
        min_tokens = {s.name: s.min_tokens for s in [*stage.sources, *stage.replay.sources]}
        for s in manifest["sources"]:
            if min_tokens[s["name"]]:
                counted = count_from_index(Path(s["files"][0]["path"]).parent, min_tokens[s["name"]])
                assert (s["documents_qualifying"], s["tokens_qualifying"]) == counted, f.name
            else:
                assert not {"min_tokens", "documents_qualifying", "tokens_qualifying"} & s.keys(), f.name
        batches = list(PackedLoader(manifest, batch_size=4))
        sequences = sum(len(b["input_ids"]) for b in batches)
        assert sequences == round(stage.tokens / stage.seq_len), f.name
    stage2 = load_stage(REPO / "mixes" / "stage2.yaml")
    assert [s.packing for s in stage2.sources] == ["same_type"] and stage2.replay.share == 0.5


def test_show_prints_the_table_and_draws_the_composition(tmp_path, shards):
    stage = write_stage(tmp_path, STAGE.format(**shards))
    assert cpt_mix("build", str(stage), "--output", str(tmp_path / "m")).returncode == 0
    proc = cpt_mix("show", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "general" in proc.stdout and "replay" in proc.stdout
    png = tmp_path / "m" / "composition.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    manifest = tmp_path / "m" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"seed": 7', '"seed": 8'))
    proc = cpt_mix("show", str(manifest))
    assert proc.returncode == 2 and "manifest_hash" in proc.stderr


def lengths_folder(path, lengths: list[list[int]], tokenizer, seed: int = 0):
    """A token-shard folder whose shards hold documents of the given lengths (one list per shard)."""
    path.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, shard in enumerate(lengths):
        ds = path / f"{i:05d}_unshuffled.ds"
        rng.integers(3, 1000, sum(shard), dtype=np.uint16).tofile(ds)
        np.cumsum(np.array(shard, dtype=np.uint64)).astype(np.uint64).tofile(f"{ds}.index")
    write_manifest(path, path.name, tokenizer, 2)
    return path


def count_from_index(folder, min_tokens: int) -> tuple[int, int]:
    """Documents of at least `min_tokens` tokens and their tokens, counted from the indexes directly."""
    documents = tokens = 0
    for index in sorted(folder.glob("*.ds.index")):
        ends = [int(e) for e in np.fromfile(index, dtype=np.uint64)]
        for start, end in zip([0, *ends[:-1]], ends, strict=True):
            if end - start >= min_tokens:
                documents, tokens = documents + 1, tokens + end - start
    return documents, tokens


@pytest.fixture
def long_docs(tmp_path, shards):
    """`shards` plus a folder of documents from 20 to 6,000 tokens over two shards, with some of exactly
    2,000 (the boundary of the tests' min_tokens)."""
    rng = np.random.default_rng(5)
    lengths = [
        [*rng.integers(20, 6_000, 40).tolist(), 2_000, 1_999],
        [2_000, *rng.integers(20, 600, 30).tolist()],
    ]
    tok = tmp_path / "tok" / "tokenizer.json"
    return {**shards, "long": lengths_folder(tmp_path / "tokens" / "long", lengths, tok, seed=4)}


LONG_STAGE = STAGE.replace(
    "  - {{name: en_web, path: {en}, weight: 1}}",
    "  - {{name: en_web, path: {en}, weight: 1}}\n  - {{name: long_web, path: {long}, tokens: 20000, min_tokens: 2000}}",
)


def test_min_tokens_counts_the_long_documents_from_the_index(tmp_path, long_docs, monkeypatch):
    from cpt.mix import plan as planner
    from cpt.mix.stage import load_stage

    documents, tokens = count_from_index(long_docs["long"], 2_000)
    assert 0 < tokens < sum(f.stat().st_size // 2 for f in long_docs["long"].glob("*.ds"))
    stage = write_stage(tmp_path, LONG_STAGE.format(**long_docs))
    proc = cpt_mix("build", str(stage), "--output", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    long = next(s for s in manifest["sources"] if s["name"] == "long_web")
    assert (long["min_tokens"], long["documents_qualifying"], long["tokens_qualifying"]) == (
        2_000,
        documents,
        tokens,
    )
    assert long["tokens_available"] == tokens and long["epochs"] == pytest.approx(20_000 / tokens)
    assert f"{documents:,} of 73 documents qualify, {tokens:,} of" in proc.stdout
    for s in manifest["sources"]:  # the other sources, and the stage, carry none of the new keys
        if s["name"] != "long_web":
            assert not {"min_tokens", "documents_qualifying", "tokens_qualifying"} & s.keys()
    assert "anneal_tokens" not in manifest
    # counted a chunk of the index at a time, the counts are the same
    monkeypatch.setattr(planner, "INDEX_CHUNK", 7)
    again = planner.plan(load_stage(stage), str(stage))
    assert again["manifest_hash"] == manifest["manifest_hash"]
    assert cpt_mix("show", str(tmp_path / "m")).returncode == 0


def test_min_tokens_refuses_a_budget_its_long_documents_cannot_give(tmp_path, long_docs):
    documents, tokens = count_from_index(long_docs["long"], 2_000)
    text = LONG_STAGE.format(**long_docs)

    def budget(n: int):  # long_web's fixed tokens, read at most half an epoch of its long documents
        return write_stage(
            tmp_path, text.replace("tokens: 20000, min_tokens", f"tokens: {n}, max_epochs: 0.5, min_tokens")
        )

    # within max_epochs of the qualifying tokens it plans; one token more is refused
    assert cpt_mix("build", str(budget(tokens // 2)), "--dry-run").returncode == 0
    proc = cpt_mix("build", str(budget(tokens // 2 + 1)), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    for part in (
        "sources[2] (long_web)",
        "min_tokens 2,000",
        f"its {documents:,} documents that long hold {tokens:,} tokens",
        f"its {tokens // 2 + 1:,} need {2 * (tokens // 2 + 1):,} within its max_epochs 0.5",
    ):
        assert part in proc.stderr, (part, proc.stderr)
    # no document that long at all
    none = write_stage(tmp_path, text.replace("min_tokens: 2000", "min_tokens: 100000"))
    proc = cpt_mix("build", str(none), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "long_web" in proc.stderr and "min_tokens 100,000: none of its 73 documents" in proc.stderr


def test_min_tokens_and_anneal_tokens_are_validated(tmp_path, long_docs):
    cases = {
        "negative min_tokens": ("min_tokens: 2000", "min_tokens: -1", "sources[2].min_tokens: must be"),
        "min_tokens not a number": (
            "min_tokens: 2000",
            "min_tokens: long",
            "sources[2].min_tokens: expected int",
        ),
        "misspelt min_tokens": ("min_tokens: 2000", "min_token: 2000", "sources[2].min_token: unknown key"),
        "anneal over the stage": (
            "seed: 7",
            "seed: 7\nanneal_tokens: 100001",
            "anneal_tokens: must be within",
        ),
        "negative anneal": ("seed: 7", "seed: 7\nanneal_tokens: -5", "anneal_tokens: must be within"),
        "anneal not a number": ("seed: 7", "seed: 7\nanneal_tokens: 1.5", "anneal_tokens: expected int"),
    }
    for name, (old, new, message) in cases.items():
        stage = write_stage(tmp_path, LONG_STAGE.format(**long_docs).replace(old, new, 1))
        proc = cpt_mix("build", str(stage), "--dry-run")
        assert proc.returncode == 2 and message in proc.stderr, (name, proc.stderr)


def test_anneal_tokens_is_written_when_set_and_zero_changes_nothing(tmp_path, shards):
    from cpt.mix.plan import plan
    from cpt.mix.stage import load_stage

    text = STAGE.format(**shards)
    plain = plan(load_stage(write_stage(tmp_path, text)))
    zeros = text.replace("seed: 7", "seed: 7\nanneal_tokens: 0").replace(
        "weight: 1}", "weight: 1, min_tokens: 0}"
    )
    assert plan(load_stage(write_stage(tmp_path, zeros))) == plain  # same content, same hash
    assert "anneal_tokens" not in plain
    assert not any(
        {"min_tokens", "documents_qualifying", "tokens_qualifying"} & s.keys() for s in plain["sources"]
    )
    stage = write_stage(tmp_path, text.replace("seed: 7", "seed: 7\nanneal_tokens: 100000"))
    proc = cpt_mix("build", str(stage), "--output", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["anneal_tokens"] == 100_000 and manifest["manifest_hash"] != plain["manifest_hash"]
    assert "LR annealed to 0 over its last 100,000 tokens" in proc.stdout


def test_a_build_into_a_folder_another_build_is_writing_is_refused(shards, tmp_path):
    from cpt.io import output_lock

    stage, out = write_stage(tmp_path, STAGE.format(**shards)), tmp_path / "mix"
    with output_lock(out, "cpt-mix build"):  # held as a running build would hold it
        proc = cpt_mix("build", str(stage), "--output", str(out))
    assert (
        proc.returncode == 2
        and f"another command is writing it (cpt-mix build, pid {os.getpid()}" in proc.stderr
    )
    assert not out.exists()
    assert cpt_mix("build", str(stage), "--output", str(out)).returncode == 0  # released with its holder
