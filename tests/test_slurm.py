"""Pipelines and training through a real Slurm controller (deploy/slurm/up.sh starts one on this machine).

These run where `sbatch` answers; in CI (`CI` set) a missing Slurm is a failure, not a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest

from conftest import REPO, missing, run_cli
from cpt.demo.sample_warc import write_sample_warc
from cpt.tok.merge import merge


def _slurm_up() -> bool:
    if not shutil.which("sbatch"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


pytestmark = pytest.mark.slow
if not _slurm_up():
    missing("no Slurm controller answers here: sbatch/sinfo (bash deploy/slurm/up.sh starts one)")


def wait_for_queue(timeout: float = 900) -> None:
    """Until no job of ours is pending or running."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["squeue", "-h", "-o", "%i %T %r"], capture_output=True, text=True).stdout
        jobs = [line.split() for line in out.strip().splitlines()]
        if not jobs:
            return
        # a job waiting on one that failed (datatrove's stats merge after a failed array) never runs
        if all(state == "PENDING" and reason == "DependencyNeverSatisfied" for _, state, reason in jobs):
            subprocess.run(["scancel", *[job for job, _, _ in jobs]], check=True)
            return
        time.sleep(1)
    raise AssertionError(f"Slurm jobs still queued after {timeout} s:\n{out}")


def shards(folder: Path) -> list[dict]:
    frame = pl.read_parquet(folder / "*" / "*.parquet")
    return sorted(frame.select("id", "text", "lang", "url").to_dicts(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm") / "warc"
    for seed in (1, 2, 3):
        write_sample_warc(folder / f"part{seed}.warc.gz", seed=seed, n_articles=6, large_page_mb=0.1)
    return folder


@pytest.fixture(scope="module")
def local_clean(warcs):
    out = warcs.parent / "clean_local"
    run_cli(
        "clean",
        "--input",
        str(warcs),
        "--output",
        str(out),
        "--tasks",
        "4",
        "--no-progress",
    )
    return out


def queue_is_empty() -> bool:
    return not subprocess.run(["squeue", "-h"], capture_output=True, text=True, check=True).stdout.strip()


def test_clean_as_a_slurm_array_job_with_wait_returns_when_it_has_ended_with_the_local_output(
    warcs, local_clean
):
    """One array job of four tasks, waited on (submitting without --wait is exercised by the failed-task
    test below, which polls the queue itself)."""
    out = warcs.parent / "clean_wait"
    proc = run_cli("clean", "--input", str(warcs), "--output", str(out), "--tasks", "4", "--executor", "slurm",
                   "--wait", "--no-progress")  # fmt: skip
    assert queue_is_empty()  # it returned only once the array job and datatrove's stats merge had ended
    assert "written by language" in proc.stdout and json.loads((out / "report" / "funnel.json").read_text())
    assert len(list((out / "report" / "logs" / "completions").iterdir())) == 4
    assert list((out / "report" / "logs" / "slurm").glob("*.out"))  # Slurm's own logs of the array tasks
    assert shards(out) == shards(local_clean)
    assert run_cli("funnel", str(out)).returncode == 0


def test_dedup_stages_as_dependent_slurm_jobs_match_local_and_tokenize_waits_for_them(local_clean, tmp_path):
    from cpt.tok.train import train

    local, slurm = local_clean.parent / "dedup_local", local_clean.parent / "dedup_slurm"
    # two tasks a stage, two MinHash bands and two line-count shards (instead of one a shard, 14 and 8):
    # every stage is still an array of several tasks, in a third of the job starts
    small = ["--tasks", "2", "--set", "minhash.num_buckets=2", "--set", "lines.shards=2", "--no-progress"]
    run_cli("dedup", "--input", str(local_clean), "--output", str(local), *small)
    proc = run_cli("dedup", "--input", str(local_clean), "--output", str(slurm), "--executor", "slurm",
                   "--wait", *small)  # fmt: skip
    assert queue_is_empty() and "written by language" in proc.stdout
    assert shards(slurm) == shards(local)

    train(local / "en", tmp_path / "tok", 1000, options={"hard_vocab_limit": "false"})
    merge(tmp_path / "tok", tmp_path / "tok", tmp_path / "merged")
    tokens = {}
    for kind in ("local", "slurm"):
        out = tmp_path / f"tokens_{kind}"
        proc = run_cli("tokenize", "--input", str(local), "--tokenizer", str(tmp_path / "merged"), "--output",
                       str(out), "--executor", kind, "--wait", "--no-progress")  # fmt: skip
        assert "documents" in proc.stdout
        files = sorted(out.rglob("*.ds"))  # a folder per language of the dedup output
        assert files
        tokens[kind] = (
            [(str(f.relative_to(out)), f.read_bytes()) for f in files],
            {
                str(m.relative_to(out)): json.loads(m.read_text())["tokens"]
                for m in sorted(out.rglob("tokens.json"))
            },
        )
    assert tokens["slurm"] == tokens["local"] and queue_is_empty()


def test_wait_exits_non_zero_naming_the_failed_task_and_its_log(warcs):
    out = warcs.parent / "clean_fail_wait"
    blocker = out / "en" / "000_00002.parquet.tmp"
    blocker.mkdir(parents=True)  # task 2 cannot open its output file
    proc = run_cli("clean", "--input", str(warcs), "--output", str(out), "--tasks", "4", "--executor", "slurm",
                   "--wait", "--no-progress", check=False)  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "task 2 did not complete" in proc.stderr and "task_00002.log" in proc.stderr
    assert "task 0 " not in proc.stderr and "task 1 " not in proc.stderr
    assert queue_is_empty()  # the stats merge that waited on the failed array was cancelled, not left behind


def test_a_failed_array_task_is_reported_and_only_it_reruns(warcs, local_clean):
    out = warcs.parent / "clean_fail"
    blocker = out / "en" / "000_00001.parquet.tmp"
    blocker.mkdir(parents=True)  # task 1 cannot open its output file: it fails, the others finish
    args = ["clean", "--input", str(warcs), "--output", str(out), "--tasks", "4", "--executor", "slurm",
            "--no-progress"]  # fmt: skip
    assert "submitted" in run_cli(*args).stdout  # without --wait it returns once the jobs are queued
    assert json.loads((out / ".cpt.slurm_jobs").read_text())["jobs"]  # what a later command checks first
    wait_for_queue()
    completions = out / "report" / "logs" / "completions"
    assert sorted(p.name for p in completions.iterdir()) == ["00000", "00002", "00003"]
    report = run_cli("funnel", str(out), check=False)
    assert report.returncode == 1
    assert "task 1 did not complete" in report.stderr and "task_00001.log" in report.stderr

    before = {p.name: p.stat().st_mtime_ns for p in completions.iterdir()}
    slurm_logs = set((out / "report" / "logs" / "slurm").glob("*.out"))
    blocker.rmdir()
    run_cli(*args)
    wait_for_queue()
    assert sorted(p.name for p in completions.iterdir()) == ["00000", "00001", "00002", "00003"]
    assert {n: (completions / n).stat().st_mtime_ns for n in before} == before  # the others did not rerun
    # datatrove submitted an array of the one unfinished rank (its index 0 maps to rank 1) and its stats merge
    assert set((out / "report" / "logs" / "slurm").glob("*.out")) - slurm_logs
    assert shards(out) == shards(local_clean)


def test_a_command_on_an_output_that_queued_jobs_still_write_is_refused(warcs):
    """A submission without --wait leaves its jobs in OUTPUT/.cpt.slurm_jobs (the output lock ends with the
    submitting command): while one of them is queued, a new command on that output is refused in one line.
    The queued job here is a held one, so it cannot end while the test looks."""
    held = subprocess.run(["sbatch", "--parsable", "--hold", "--wrap", "true"], capture_output=True, text=True,
                          check=True, timeout=60).stdout.strip().split(";")[0]  # fmt: skip
    out = warcs.parent / "clean_queued"
    out.mkdir()
    (out / ".cpt.slurm_jobs").write_text(json.dumps({"jobs": [held]}))
    try:
        proc = run_cli("clean", "--input", str(warcs), "--output", str(out), "--tasks", "4", "--executor",
                       "slurm", "--no-progress", check=False)  # fmt: skip
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
        assert f"Slurm job {held} of an earlier submission still write it" in errors[0]
        assert sorted(p.name for p in out.iterdir()) == [".cpt.slurm_jobs"]  # nothing submitted or written
    finally:
        subprocess.run(["scancel", held], check=True, timeout=30)
    wait_for_queue()
    proc = run_cli("clean", "--input", str(warcs), "--output", str(out), "--tasks", "4", "--executor", "slurm",
                   "--wait", "--no-progress")  # fmt: skip
    assert "written by language" in proc.stdout and not (out / ".cpt.slurm_jobs").exists()


def read_log(path):
    """srun merges the ranks' output into one file in chunks that may split a progress bar's multi-byte
    characters, with the other rank's lines between the halves: the log is not always valid UTF-8."""
    return path.read_bytes().decode("utf-8", errors="replace")


def test_training_as_a_slurm_batch_job_that_is_signalled_requeues_itself_and_finishes(tmp_path):
    """trainer/slurm/train.sbatch: srun starts two CPU ranks of trainer/main.py; SIGUSR1 (what `--signal`
    sends before the time limit) makes them checkpoint and exit 75, the script requeues the job, and the
    same command line (`--resume auto`) continues the run to its end."""
    from trainer_setup import build_small_setup

    s = build_small_setup(tmp_path)
    out = tmp_path / "run"
    env = {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "OMP_NUM_THREADS": "1",
        "PYTHON": str(REPO / ".venv" / "bin" / "python"),
    }
    log_file = tmp_path / "slurm.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--ntasks-per-node=2", f"--output={log_file}", "trainer/slurm/train.sbatch",
         "--mix", str(s["manifest"]), "--config", str(s["config"]), "--output", str(out), "--resume", "auto",
         "--set", "eval.sets=[]", "--set", "checkpoint.every=100"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    job = submitted.stdout.strip().split(";")[0]
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        time.sleep(0.1)
    assert metrics.is_file(), read_log(log_file)[-3000:] if log_file.is_file() else "no log"
    subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)  # every rank, not the script
    wait_for_queue()
    log = read_log(log_file)
    assert "requeueing job" in log and "start 2" in log, log[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000016", log[-3000:]
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert len(kept) == 2 and kept[1] == "step_00000016", kept  # the one the stop saved, and the end
    stopped_at = int(kept[0].split("_")[1])
    assert 1 <= stopped_at < 16
    # every step logged once: the first start stopped after step N, the second went on from N + 1
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 17))
    assert "2 ranks" in log
