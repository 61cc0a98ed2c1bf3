"""Seeded fuzzing of every input format a command reads: real WARC, WET, jsonl, Parquet, YAML and token
shards, truncated, bit-flipped or spliced at offsets drawn from a fixed seed, then handed to the real
command. Whatever the damage, each run must end with its documented exit code (0: done, 2: one `error:`
line naming what is wrong), never a traceback; a finished run's funnel must be conserved and its shards
must hold what the funnel says; the inputs are left as they were and nothing appears outside --output.

CPT_FUZZ_ROUNDS=N runs N seeds of every case instead of one (the cases are the same each time).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, data_path, llama3_tokenizer, run_cli

SEED = 15
ROUNDS = int(os.environ.get("CPT_FUZZ_ROUNDS", "1"))
MUTATIONS = ("truncate", "flip", "splice")


def mutate(data: bytes, how: str, rng: random.Random) -> bytes:
    """`data` damaged one way at offsets drawn from `rng`."""
    if how == "truncate":  # a download or copy cut short
        return data[: rng.randrange(1, len(data))]
    if how == "flip":  # bit rot: a few bits flipped anywhere
        out = bytearray(data)
        for _ in range(8):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        return bytes(out)
    # splice: a stretch of the file copied over another place, as a bad concatenation leaves it
    i, j = sorted(rng.sample(range(len(data)), 2))
    k = rng.randrange(1, max(2, min(4096, len(data) - j)))
    return data[:i] + data[j : j + k] + data[i:]


def _texts() -> list[str]:
    text = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    paragraphs = [p.replace("\n", " ").strip() for p in text.split("\n\n")]
    return [p for p in paragraphs if len(p) > 200][:40]


def _jsonl_bytes() -> bytes:
    return "".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(_texts())).encode()


def _parquet_bytes(tmp: Path) -> bytes:
    from cpt.shards import CLEAN_SCHEMA

    texts = _texts()
    rows = {
        "id": [f"p{i}" for i in range(len(texts))],
        "text": texts,
        "url": [f"https://example.org/{i}" for i in range(len(texts))],
        "lang": ["en"] * len(texts),
        "lang_score": [0.9] * len(texts),
        "source": ["fuzz"] * len(texts),
        "metadata": [{}] * len(texts),
    }
    path = tmp / "seed.parquet"
    pq.write_table(pa.Table.from_pydict(rows, schema=CLEAN_SCHEMA), path, row_group_size=10)
    return path.read_bytes()


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every file under `root` outside `skip`, with its hash: inputs untouched, nothing written beside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def _check_exit(proc: subprocess.CompletedProcess, case: str) -> None:
    detail = f"{case}\nexit {proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, detail
    assert proc.returncode in (0, 2), detail
    if proc.returncode == 2:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, detail


def _check_funnel(output: Path, case: str) -> None:
    funnel = json.loads((output / "report" / "funnel.json").read_text(encoding="utf-8"))
    assert funnel["tasks_done"] == funnel["tasks_total"], case
    steps = funnel["steps"]
    for row in steps:
        assert row["docs_in"] == row["kept"] + row["removed_total"], (case, row)
    for prev, row in zip(steps, steps[1:], strict=False):
        assert row["docs_in"] == prev["kept"], (case, prev, row)
    shards = [p for p in output.rglob("*.parquet") if not {"report", "removed", ".work"} & set(p.parts)]
    on_disk = sum(pq.read_metadata(p).num_rows for p in shards)
    assert on_disk == sum(funnel["outputs"].values()) == steps[-1]["kept"], (case, on_disk, funnel["outputs"])


# (format, file name, how the seed file is made); WARC and WET are real crawl files
FORMATS = {
    "warc": ("crawl.warc.gz", lambda tmp: data_path("warc", "whirlwind.warc.gz").read_bytes()),
    "wet": ("crawl.warc.wet.gz", lambda tmp: data_path("warc", "whirlwind.warc.wet.gz").read_bytes()),
    "jsonl": ("docs.jsonl", lambda tmp: _jsonl_bytes()),
    "jsonl.gz": ("docs.jsonl.gz", lambda tmp: gzip.compress(_jsonl_bytes(), mtime=0)),
    "parquet": ("docs.parquet", _parquet_bytes),
}
CASES = [(fmt, how, r) for r in range(ROUNDS) for fmt in FORMATS for how in MUTATIONS]


@pytest.mark.parametrize("fmt, how, round_", CASES, ids=[f"{f}-{h}-{r}" for f, h, r in CASES])
def test_clean_survives_damaged_input(tmp_path, fmt, how, round_):
    name, make = FORMATS[fmt]
    rng = random.Random(f"{SEED}-{fmt}-{how}-{round_}")
    (tmp_path / "in").mkdir()
    good = make(tmp_path)
    (tmp_path / "seed.parquet").unlink(missing_ok=True)
    (tmp_path / "in" / name).write_bytes(mutate(good, how, rng))
    (tmp_path / "in" / f"intact_{name}").write_bytes(good)  # damage in one file loses nothing of another
    output = tmp_path / "out"
    before = _snapshot(tmp_path, output)
    steps = "extract" if fmt in ("warc", "wet") else "pii"
    proc = run_cli("clean", "--input", str(tmp_path / "in"), "--output", str(output), "--steps", steps,
                   "--no-progress", check=False)  # fmt: skip
    case = f"clean {fmt} {how} round {round_}"
    _check_exit(proc, case)
    assert _snapshot(tmp_path, output) == before, case
    if proc.returncode == 0:
        _check_funnel(output, case)


@pytest.mark.slow
@pytest.mark.parametrize("how", MUTATIONS)
def test_dedup_survives_a_damaged_shard(tmp_path, how):
    rng = random.Random(f"{SEED}-dedup-{how}")
    good = _parquet_bytes(tmp_path)
    (tmp_path / "seed.parquet").unlink()
    (tmp_path / "clean" / "en").mkdir(parents=True)
    (tmp_path / "clean" / "en" / "00000.parquet").write_bytes(mutate(good, how, rng))
    (tmp_path / "clean" / "en" / "00001.parquet").write_bytes(good)
    output = tmp_path / "dedup"
    before = _snapshot(tmp_path, output)
    proc = run_cli("dedup", "--input", str(tmp_path / "clean"), "--output", str(output), "--no-progress",
                   check=False)  # fmt: skip
    _check_exit(proc, f"dedup {how}")
    assert _snapshot(tmp_path, output) == before
    if proc.returncode == 0:
        _check_funnel(output, f"dedup {how}")


@pytest.mark.parametrize("how", MUTATIONS)
def test_a_damaged_config_is_one_line(tmp_path, how):
    rng = random.Random(f"{SEED}-yaml-{how}")
    good = (REPO / "pipelines" / "configs" / "clean.yaml").read_bytes()
    config = tmp_path / "clean.yaml"
    config.write_bytes(mutate(good, how, rng))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_bytes(_jsonl_bytes())
    before = _snapshot(tmp_path, tmp_path / "out")
    proc = run_cli("clean", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--config",
                   str(config), "--dry-run", check=False)  # fmt: skip
    _check_exit(proc, f"yaml {how}")
    assert _snapshot(tmp_path, tmp_path / "out") == before


@pytest.mark.parametrize("target", ["ds", "index", "manifest"])
@pytest.mark.parametrize("how", MUTATIONS)
def test_mix_build_survives_damaged_token_shards(tmp_path, how, target):
    from cpt.tokens import write_manifest

    tokenizer = llama3_tokenizer()
    rng = random.Random(f"{SEED}-tokens-{how}-{target}")
    folder = tmp_path / "tokens" / "web"
    folder.mkdir(parents=True)
    lengths = np.random.default_rng(SEED).integers(20, 200, size=50)
    ids = np.random.default_rng(SEED + 1).integers(0, 128_000, size=int(lengths.sum()), dtype=np.uint32)
    ids.tofile(folder / "00000_unshuffled.ds")
    np.cumsum(lengths).astype(np.uint64).tofile(folder / "00000_unshuffled.ds.index")
    write_manifest(folder, "web", tokenizer, 4)
    path = {"ds": "00000_unshuffled.ds", "index": "00000_unshuffled.ds.index", "manifest": "tokens.json"}[
        target
    ]
    (folder / path).write_bytes(mutate((folder / path).read_bytes(), how, rng))
    stage = tmp_path / "fuzz.yaml"
    stage.write_text(
        f"name: fuzz\nseq_len: 64\ntokens: 2000\nsources: [{{name: web, path: {folder}, weight: 1}}]\n"
    )
    output = tmp_path / "mix"
    before = _snapshot(tmp_path, output)
    proc = subprocess.run(
        [sys.executable, "-m", "cpt.mix.cli", "build", str(stage), "--output", str(output)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_exit(proc, f"cpt-mix build, {target} {how}")
    assert _snapshot(tmp_path, output) == before
    if proc.returncode == 0:  # a manifest it wrote is one the trainer's loader accepts
        from cpt.manifest import read_stage_manifest

        read_stage_manifest(output)
