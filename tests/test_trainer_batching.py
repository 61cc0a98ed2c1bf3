"""The trainer with the settings production uses: bf16 and gradient accumulation, and a loss that is the
mean over the optimizer step's target tokens however the step is split into micro-batches and ranks."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from cpt.data import PackedLoader
from cpt.manifest import write_stage_manifest
from cpt.mix.plan import plan
from cpt.mix.stage import Replay, Source, Stage
from cpt.report.collect import read_metrics
from cpt.tokens import write_manifest
from trainer.checkpoint import load_plain
from trainer_setup import SEQ_LEN, build_small_setup, free_port

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = build_small_setup(tmp_path_factory.mktemp("batching"))
    # instruction-style packing of the new domain: whole documents, padded, so micro-batches hold
    # different numbers of target tokens
    tokens = s["root"] / "tokens"
    ids = np.fromfile(tokens / "zh_web" / "00000_unshuffled.ds", dtype=np.uint16)
    lengths = np.resize([13, 29, 41, 7, 50, 22, 35], len(ids) // 30)  # short documents, cut from the text
    short = tokens / "zh_short"
    short.mkdir()
    ids[: lengths.sum()].tofile(short / "00000_unshuffled.ds")
    np.cumsum(lengths).astype(np.uint64).tofile(short / "00000_unshuffled.ds.index")
    write_manifest(short, "zh_short", s["root"] / "tok", 2)
    stage = Stage(
        name="padded",
        seq_len=SEQ_LEN,
        tokens=SEQ_LEN * 4 * 8,  # 8 steps of 4 sequences
        seed=5,
        sources=[Source(name="zh_short", path=str(short), weight=1.0, packing="same_type", type="web")],
        replay=Replay(share=0.25, sources=[Source(name="en_web", path=str(tokens / "en_web"))]),
    )
    write_stage_manifest(plan(stage), s["root"] / "padded")
    return {**s, "padded": s["root"] / "padded" / "manifest.json"}


def train(setup, output: Path, *overrides: str, ranks: int = 1, manifest: str = "padded") -> dict:
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks), "--master_port",
           str(free_port()), "trainer/main.py", "--mix", str(setup[manifest]), "--config", str(setup["config"]),
           "--output", str(output), "--set", "eval.sets=[]", "--set", "log.every=1"]  # fmt: skip
    for item in overrides:
        cmd += [item] if item.startswith("--") else ["--set", item]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_metrics(output)


def test_the_padded_stage_gives_micro_batches_of_different_token_counts(setup):
    loader = PackedLoader(setup["padded"], batch_size=1, workers=0)
    counts = [int((b["labels"][:, 1:] != -100).sum()) for _, b in zip(range(16), loader, strict=False)]
    assert min(counts) < SEQ_LEN - 2 < max(counts)  # some sequences padded, some full


def test_the_loss_is_the_mean_over_the_steps_tokens_however_the_step_is_split(setup, tmp_path):
    """micro 4 x accumulation 1 on one rank, micro 1 x accumulation 4, and 2 ranks x micro 1 x
    accumulation 2: each optimizer step sees the same 4 sequences, so loss and gradient norm agree."""
    common = ("deepspeed.bf16=false", "max_steps=3", "checkpoint.every=100")
    whole = train(setup, tmp_path / "m4", "data.micro_batch_size=4", "data.gradient_accumulation=1", *common)
    accumulated = train(
        setup, tmp_path / "a4", "data.micro_batch_size=1", "data.gradient_accumulation=4", *common
    )
    ranks = train(
        setup, tmp_path / "r2", "data.micro_batch_size=1", "data.gradient_accumulation=2", *common, ranks=2
    )
    for step in (1, 2, 3):
        for split in (accumulated, ranks):
            assert split[step]["loss"] == pytest.approx(whole[step]["loss"], rel=1e-5), step
            assert split[step]["grad_norm"] == pytest.approx(whole[step]["grad_norm"], rel=1e-4), step
            assert split[step]["lr"] == whole[step]["lr"]
            assert split[step]["tokens_seen"] == whole[step]["tokens_seen"] == step * 4 * SEQ_LEN
    # document masking: attention is counted over each document's own length, below the full-sequence figure
    assert 0 < whole[1]["tflops_per_device_docs"] < whole[1]["tflops_per_device"]


def test_bf16_with_accumulation_on_two_ranks_learns_and_resumes_exactly(setup, tmp_path):
    """The defaults users run: bf16 (DeepSpeed keeps fp32 masters), accumulation > 1, ZeRO-2, 2 ranks."""
    common = ("deepspeed.bf16=true", "data.micro_batch_size=1", "data.gradient_accumulation=2",
              "checkpoint.every=3", "optim.lr=1e-2")  # fmt: skip
    whole = train(setup, tmp_path / "whole", *common, "max_steps=8", ranks=2)
    assert sorted(whole) == list(range(1, 9)) and all(math.isfinite(m["grad_norm"]) for m in whole.values())
    assert whole[8]["loss"] < whole[1]["loss"] - 0.05  # it learns in bf16
    split = tmp_path / "split"
    train(setup, split, *common, "max_steps=3", ranks=2)
    resumed = train(setup, split, *common, "max_steps=8", "--resume", ranks=2)
    for step in range(1, 9):
        assert resumed[step]["loss"] == whole[step]["loss"], step  # bit for bit across the resume
        assert resumed[step]["lr"] == whole[step]["lr"], step
    # the module weights a checkpoint holds are bf16 compute copies (DeepSpeed keeps the fp32 masters apart)
    states = load_plain(split / "checkpoints" / "step_00000008" / "mp_rank_00_model_states.pt")
    assert {t.dtype for t in states["module"].values() if t.is_floating_point()} == {torch.bfloat16}
    # requeued on one rank: ZeRO-2's optimizer state is split by rank, so the resume is refused before any
    # work, in one line naming both counts and the way on (the other direction, 1 -> 2, is a hostile probe)
    before = sorted((p.name, p.stat().st_mtime_ns) for p in split.rglob("*"))
    cmd = [sys.executable, "trainer/main.py", "--mix", str(setup["padded"]), "--config", str(setup["config"]),
           "--output", str(split), "--resume", "--set", "max_steps=9"]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"}
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {split / 'checkpoints' / 'step_00000008'}: saved by 2 ranks under ZeRO stage 2, whose optimizer "
        f"state is split by rank; this run has 1: resume it on 2 ranks, or start a new run from its weights with "
        f"--init-from {split}:step_00000008"
    )
    assert sorted((p.name, p.stat().st_mtime_ns) for p in split.rglob("*")) == before  # nothing written
