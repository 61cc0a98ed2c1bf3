"""Misuse of the pipeline commands (clean, dedup, score) and of their settings: each probe runs the real
command and expects one line naming the file, key or value (exit 2), before anything is written."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import llama3_tokenizer, run_cli
from cpt.config import ConfigError, apply_overrides, parse_yaml

CLEAN = ["--no-progress", "--steps", "pii"]  # a cheap step: these probes are about the run, not the filters


def _jsonl(path: Path, n: int, start: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": f"d{i}", "text": f"Document number {i} says something of its own, {i * 7} times."})
        for i in range(start, start + n)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _one_line_error(proc, expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict:
    """A finished two-file clean run (two tasks) and the folders around it."""
    root = tmp_path_factory.mktemp("runs")
    _jsonl(root / "in" / "a.jsonl", 6)
    _jsonl(root / "in" / "b.jsonl", 6, start=6)
    run_cli("clean", "--input", str(root / "in"), "--output", str(root / "clean"), *CLEAN)
    return {"root": root, "input": root / "in", "clean": root / "clean"}


def _copy_run(finished: dict, tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(finished["input"], tmp_path / "in")
    shutil.copytree(finished["clean"], tmp_path / "clean")
    return tmp_path / "in", tmp_path / "clean"


def test_output_that_is_a_file_is_refused(finished, tmp_path):
    target = tmp_path / "out.parquet"
    target.write_bytes(b"mine")
    proc = run_cli("clean", "--input", str(finished["input"]), "--output", str(target), *CLEAN, check=False)
    _one_line_error(proc, "is a file, not a folder")
    assert target.read_bytes() == b"mine"


@pytest.mark.parametrize(
    "command, output",
    [
        ("clean", "input"),  # --output = --input
        ("clean", "input/out"),  # inside it: a rerun would read its own shards
        ("dedup", "clean"),  # dedup over the clean shards it reads
        ("score", "clean/scored"),
    ],
)
def test_output_inside_the_input_is_refused(finished, tmp_path, command, output):
    source, clean = _copy_run(finished, tmp_path)
    folders = {"input": source, "clean": clean}
    given = folders["input"] if command == "clean" else clean
    head, _, tail = output.partition("/")
    target = folders[head] / tail if tail else folders[head]
    before = _digest(given)
    extra = ["--classifiers", "", "--set", "kl.enabled=true"] if command == "score" else []
    proc = run_cli(
        command, "--input", str(given), "--output", str(target), "--no-progress", *extra, check=False
    )
    _one_line_error(proc, "would write into what it reads")
    assert _digest(given) == before


@pytest.mark.parametrize(
    "change, expected",
    [("add", "c.jsonl is new"), ("remove", "b.jsonl is gone"), ("grow", "a.jsonl was ")],
)
def test_resume_with_changed_inputs_is_refused_and_writes_nothing(finished, tmp_path, change, expected):
    source, clean = _copy_run(finished, tmp_path)
    if change == "add":
        _jsonl(source / "c.jsonl", 3, start=50)
    elif change == "remove":
        (source / "b.jsonl").unlink()
    else:
        with (source / "a.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"text": "one more line"}) + "\n")
    before = _digest(clean)
    # the same --tasks as the first run: only the inputs differ
    proc = run_cli(
        "clean", "--input", str(source), "--output", str(clean), *CLEAN, "--tasks", "2", check=False
    )
    _one_line_error(proc, expected)
    assert _digest(clean) == before  # report/inputs/jsonl.txt included: a refused rerun writes nothing


def test_rerun_with_the_same_inputs_is_accepted(finished, tmp_path):
    _, clean = _copy_run(finished, tmp_path)
    proc = run_cli("clean", "--input", str(finished["input"]), "--output", str(clean), *CLEAN, check=False)
    assert proc.returncode == 0, proc.stderr
    pinned = json.loads((clean / "report" / "inputs.json").read_text())["files"]
    assert [(f["path"], f["size"]) for f in pinned] == [
        (name, (finished["input"] / name).stat().st_size) for name in ("a.jsonl", "b.jsonl")
    ]


def test_tokenize_of_a_language_folder_of_an_unfinished_run_is_refused(finished, tmp_path):
    _, clean = _copy_run(finished, tmp_path)
    (clean / "report" / "logs" / "completions" / "00000").unlink()
    tokenizer = llama3_tokenizer()
    proc = run_cli("tokenize", "--input", str(clean / "und"), "--tokenizer", str(tokenizer), "--output",
                   str(tmp_path / "tokens"), check=False)  # fmt: skip
    _one_line_error(proc, "1 unfinished task (task 0 did not complete")
    assert not (tmp_path / "tokens").exists()


def test_dedup_of_an_unfinished_clean_run_is_refused(finished, tmp_path):
    _, clean = _copy_run(finished, tmp_path)
    (clean / "report" / "logs" / "completions" / "00001").unlink()  # task 1 as a kill leaves it
    proc = run_cli("dedup", "--input", str(clean), "--output", str(tmp_path / "dedup"), check=False)
    _one_line_error(proc, "1 unfinished task (task 1 did not complete")
    assert not (tmp_path / "dedup").exists()


@pytest.mark.parametrize("command", ["dedup", "score"])
def test_shards_without_a_text_column_are_refused(tmp_path, command):
    (tmp_path / "mine" / "en").mkdir(parents=True)
    shard = tmp_path / "mine" / "en" / "part.parquet"
    pq.write_table(pa.table({"content": ["a b c"] * 5}), shard)
    extra = ["--classifiers", "", "--set", "kl.enabled=true"] if command == "score" else []
    proc = run_cli(command, "--input", str(tmp_path / "mine"), "--output", str(tmp_path / "out"), *extra,
                   check=False)  # fmt: skip
    _one_line_error(proc, "part.parquet: no `text` column (columns: content)")
    assert not (tmp_path / "out").exists()


def test_a_truncated_shard_is_refused_before_dedup(finished, tmp_path):
    _, clean = _copy_run(finished, tmp_path)
    shard = next(clean.glob("*/*.parquet"))
    shard.write_bytes(shard.read_bytes()[:200])
    proc = run_cli("dedup", "--input", str(clean), "--output", str(tmp_path / "dedup"), check=False)
    _one_line_error(proc, f"{shard.name}: not a readable Parquet file")


@pytest.mark.parametrize(
    "override, expected",
    [
        ("languages=[en", "override 'languages=[en': the value is not valid YAML"),
        ("langid.min_score=high", "langid.min_score: expected float, got 'high'"),
        ("write.rows_per_group=1.5", "write.rows_per_group: expected int, got 1.5"),
        ("langid", "must look like key.sub=value"),
    ],
)
def test_bad_overrides_are_one_line(finished, tmp_path, override, expected):
    proc = run_cli("clean", "--input", str(finished["input"]), "--output", str(tmp_path / "out"), "--set", override,
                   "--dry-run", check=False)  # fmt: skip
    _one_line_error(proc, expected)
    assert not (tmp_path / "out" / "report" / "settings.json").exists()


@pytest.mark.parametrize(
    "override", ["dirty_words.max_share=1e-3", "langid.min_score=5e-1", 'langid.min_score="0.5"']
)
def test_numbers_are_read_as_users_write_them(finished, tmp_path, override):
    proc = run_cli("clean", "--input", str(finished["input"]), "--output", str(tmp_path / "out"), "--set", override,
                   "--dry-run", check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_yaml_numbers_in_every_loader(tmp_path):
    from cpt.mix.stage import load_stage
    from trainer.config import load_config

    assert parse_yaml("a: 1e-4\nb: 1E5\nc: .5e1\nd: 1_000\ne: 1e-4x") == {
        "a": 1e-4,
        "b": 1e5,
        "c": 5.0,
        "d": 1000,
        "e": "1e-4x",
    }
    # the README's own example and its neighbours
    cfg = load_config(None, ["mix=m", "model.path=p", "optim.lr=1e-4", "schedule.min_lr=1e-5"])
    assert (cfg.optim.lr, cfg.schedule.min_lr) == (1e-4, 1e-5)
    with pytest.raises(ConfigError, match="optim.lr: expected float, got 'fast'"):
        load_config(None, ["mix=m", "model.path=p", "optim.lr=fast"])
    stage = tmp_path / "s.yaml"
    stage.write_text('name: s\nseq_len: 8\ntokens: 1e3\nsources: [{name: a, path: x, weight: "1.0"}]\n')
    with pytest.raises(ConfigError, match=r"tokens: expected int, got 1000\.0"):
        load_stage(stage)  # 1e3 is a float: a token count must be written as a whole number
    stage.write_text('name: s\nseq_len: 8\ntokens: 1000\nsources: [{name: a, path: x, weight: "1.0"}]\n')
    assert load_stage(stage).sources[0].weight == 1.0
    with pytest.raises(ConfigError, match="override 'a=\\{b': the value is not valid YAML"):
        apply_overrides({}, ["a={b"])
    # the other YAML values cpt reads: a stage's `where:` list and cpt-tok's --option values
    from cpt.mix.stage import Source
    from cpt.tok.cli import _options
    from cpt.tok.merge import TokenizerError

    with pytest.raises(ValueError, match="takes a list"):
        Source(where="topic in [math").condition()
    with pytest.raises(TokenizerError, match="not valid YAML"):
        _options(["split_digits=[x"])
    assert _options(["character_coverage=9.995e-1"]) == {"character_coverage": 0.9995}


def test_dry_run_writes_nothing(finished, tmp_path):
    proc = run_cli("clean", "--input", str(finished["input"]), "--output", str(tmp_path / "out"), *CLEAN,
                   "--dry-run", check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "out" / "report").exists()


def test_input_files_that_could_not_be_read_are_a_warning(tmp_path):
    import gzip

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "prose.warc.gz").write_bytes(gzip.compress(b"Plain prose, not a crawl.\n" * 2000))
    _jsonl(tmp_path / "in" / "a.jsonl", 2)
    proc = run_cli("clean", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *CLEAN)
    assert "warning: input not read: files that are not WARCs (not_warc): 1" in proc.stderr
    funnel = json.loads((tmp_path / "out" / "report" / "funnel.json").read_text())
    assert funnel["steps"][0]["removed"] == {"not_warc": 1} and funnel["outputs"] == {"und": 2}
    assert any("not_warc" in w for w in funnel["warnings"])


def _words_jsonl(path: Path, docs: int) -> Path:
    """`docs` documents of random lowercase words (seeded): text that compresses little, to fill a disk."""
    import random

    rng = random.Random(0)
    vocabulary = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(20000)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i in range(docs):
            f.write(json.dumps({"id": f"w{i}", "text": " ".join(rng.choices(vocabulary, k=100))}) + "\n")
    return path


def test_a_full_disk_under_clean_and_tokenize_is_one_line_and_leaves_nothing_under_a_final_name(
    tmp_path, small_disk
):
    """clean and tokenize into a 256 KiB disk: exit 2, one `error:` line naming the output, no traceback
    (pyarrow used to abort the process), and no shard or token file under a name a reader would take."""
    _words_jsonl(tmp_path / "in" / "words.jsonl", 3000)  # ~1.9 MB of text, ~3 MB of uint32 tokens
    full = small_disk["full"]
    proc = run_cli(
        "clean", "--input", str(tmp_path / "in"), "--output", str(full / "clean"), *CLEAN, check=False
    )
    _one_line_error(proc, f"{full / 'clean'}: no space left on the device")
    assert not list((full / "clean").rglob("*.parquet"))

    run_cli("clean", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "clean"), *CLEAN)
    proc = run_cli("tokenize", "--input", str(tmp_path / "clean" / "und"), "--tokenizer", str(llama3_tokenizer()),
                   "--output", str(full / "tokens"), "--no-progress", check=False)  # fmt: skip
    _one_line_error(proc, f"{full / 'tokens'}: no space left on the device")
    assert not [
        p.name for p in (full / "tokens").iterdir() if p.name.endswith((".ds", ".index", ".metadata"))
    ]
    assert not (full / "tokens" / "tokens.json").exists()


def test_two_clean_runs_into_one_output_one_is_refused_and_the_other_writes_what_it_would_alone(
    finished, tmp_path
):
    """Two real runs at once: the second, started while the first holds the output (the first is paused
    with SIGSTOP once its lock file names it, so the order does not depend on timing), exits 2 naming the
    first; the first then finishes with the documents of a run alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    out = tmp_path / "clean"
    argv = [sys.executable, "pipelines/run.py", "clean", "--input", str(finished["input"]), "--output", str(out),
            *CLEAN]  # fmt: skip
    first = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while first.poll() is None:  # the lock file names its holder once the lock is taken
            try:
                if json.loads((out / ".cpt.lock").read_text())["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.005)
        os.kill(first.pid, signal.SIGSTOP)
        second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-3000:]
    _one_line_error(second, f"another command is writing it (pipelines/run.py clean, pid {first.pid}")
    rows = {
        run: sorted(pq.read_table(sorted(folder.glob("*/*.parquet"))).select(["id", "text"]).to_pylist(),
                    key=lambda r: r["id"])
        for run, folder in (("alone", finished["clean"]), ("first", out))
    }  # fmt: skip
    assert rows["first"] == rows["alone"] and len(rows["alone"]) == 12


def test_two_clean_outputs_are_deduplicated_against_each_other(finished, tmp_path):
    """`dedup --input A B`: each language's shards of both, as one set: of the same 12 documents cleaned
    into two outputs, the second copies are removed."""
    again = shutil.copytree(finished["clean"], tmp_path / "again")
    out = tmp_path / "dedup"
    run_cli("dedup", "--input", str(finished["clean"]), str(again), "--output", str(out), "--no-progress")
    steps = json.loads((out / "report" / "funnel.json").read_text())["steps"]
    # the second copy of each document is an exact duplicate across the inputs (minhash then also finds
    # these template sentences near-duplicates of each other)
    assert (steps[0]["docs_in"], steps[1]["step"], steps[1]["kept"]) == (24, "url", 12), steps
    assert steps[1]["removed"] == {"url_duplicate": 12}
