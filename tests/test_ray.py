"""`--executor ray`: the pipelines on a local Ray cluster that the test starts, as a user with a Ray
cluster runs them; the output equals the local executor's, document for document."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from cpt.demo.sample_warc import write_sample_warc

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node Ray cluster (2 CPUs, no dashboard) whose address the commands get through RAY_ADDRESS."""
    if not RAY.is_file():
        pytest.fail(f"{RAY} not found: ray is a dependency of cpt (pyproject.toml)")
    port = free_port()
    temp = tmp_path_factory.mktemp("ray")
    start = [
        str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
        "--disable-usage-stats", f"--temp-dir={temp}",
    ]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, timeout=180)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        yield f"127.0.0.1:{port}"
    subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def warcs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warc")
    for seed in (0, 1):  # two files: two tasks
        write_sample_warc(folder / f"part{seed}.warc.gz", seed=seed, n_articles=6, large_page_mb=0.1)
    return folder


def documents(out: Path) -> dict[str, list[tuple[str, str]]]:
    """{language folder: sorted (id, text)} over every shard of a run."""
    by_lang: dict[str, list[tuple[str, str]]] = {}
    for f in sorted(out.glob("*/*.parquet")):
        rows = pq.read_table(f, columns=["id", "text"]).to_pylist()
        by_lang.setdefault(f.parent.name, []).extend((r["id"], r["text"]) for r in rows)
    return {lang: sorted(rows) for lang, rows in by_lang.items()}


def funnel(out: Path) -> list[dict]:
    return json.loads((out / "report" / "funnel.json").read_text())["steps"]


def both(tmp_path: Path, command: str, source: Path, *extra: str) -> tuple[Path, Path]:
    """Run `command` from `source` with the local and the ray executor; the two output folders."""
    outs = []
    for executor in ("local", "ray"):
        out = tmp_path / f"{command}-{executor}"
        proc = run_cli(
            command, "--input", str(source), "--output", str(out), "--executor", executor,
            "--no-progress", *extra,
        )  # fmt: skip
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        outs.append(out)
    return outs[0], outs[1]


def test_clean_and_dedup_on_ray_equal_the_local_run(ray_cluster, warcs, tmp_path):
    local, ray = both(tmp_path, "clean", warcs, "--tasks", "2")
    docs = documents(local)
    assert sum(len(v) for v in docs.values()) > 0 and {"en", "zh"} <= set(docs)
    assert documents(ray) == docs
    assert funnel(ray) == funnel(local)
    assert json.loads((ray / "report" / "steps.json").read_text())["pipeline"] == "clean"

    # dedup chains stages (url -> minhash signatures, buckets, clusters, filter -> lines): on Ray each
    # stage starts once the one before has finished
    # two MinHash bands and two line-count shards (instead of 14 and 8): fewer, still several, tasks a stage
    dedup_local, dedup_ray = both(
        tmp_path, "dedup", local, "--set", "minhash.num_buckets=2", "--set", "lines.shards=2"
    )
    kept = documents(dedup_local)
    assert kept and documents(dedup_ray) == kept
    assert funnel(dedup_ray) == funnel(dedup_local)
    # `funnel` reads a Ray run's logs as it reads a local run's
    shown = run_cli("funnel", str(dedup_ray))
    assert "write" in shown.stdout
