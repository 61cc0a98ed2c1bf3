"""`cpt-mix build`: stage validation, shares, epochs, tokenizers and the manifest hash."""

from __future__ import annotations

import json
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
    assert {f.stem for f in files} == {"stage1", "stage2", "stage3", "anneal"}
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
    folders["science_web"] = topics
    for f in files:
        stage = load_stage(f)
        assert stage.replay.share >= 0.05, f.name  # every stage replays old-domain data
        for s in [*stage.sources, *stage.replay.sources]:
            s.path = str(folders[s.name])
        manifest = plan(stage, f.name)
        for s in manifest["sources"]:
            if s["name"] == "science_web":  # science and tech, not food
                assert {Path(f["path"]).parent.name for f in s["files"]} == {"science", "tech"}
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
