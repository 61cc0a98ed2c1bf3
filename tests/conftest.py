"""Shared test helpers: the repository root, the real sample data beside the checkout, small builders."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; the test is skipped, saying why, when the folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample data not found at {path} (clone the project beside its shared/ folder)")
    return path


def cpt_tok(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `cpt-tok ARGS` as a user would; `check`: a failure raises with its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "cpt.tok.cli", *args], cwd=REPO, capture_output=True, text=True
    )
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def run_cli(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python pipelines/run.py ARGS` as a user would, from the repository root."""
    proc = subprocess.run(
        [sys.executable, "pipelines/run.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
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
