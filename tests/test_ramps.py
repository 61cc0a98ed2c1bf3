"""Sequence-length and batch ramps within a stage (Llama 3), and annealing the LR to zero: the step plan,
the loader's stream across the ramps' boundaries, the schedule, and a two-rank run killed and resumed
across each boundary that ends as the uninterrupted one did."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_loader import doc_folder

from conftest import REPO
from cpt.data import PackedLoader
from cpt.data.order import DocumentOrder, order_key
from cpt.manifest import write_stage_manifest
from cpt.mix.plan import plan
from cpt.mix.stage import Replay, Source, Stage
from cpt.report.collect import read_metrics
from trainer.config import ConfigError, DataConfig, ScheduleConfig
from trainer.schedule import Schedule, Segment, amount, plan_sequences, step_plan
from trainer_setup import SEQ_LEN, build_small_setup, run_train, train_cmd

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs

# 16 steps of the small set-up's 4,096 tokens (2 ranks x micro-batches of 2): 8 of 4 sequences of 32
# tokens, then 4 of 4 x 64 (the length ramp's boundary at 1,024 tokens), then 4 of 8 x 64 (the batch
# ramp's at 2,048)
RAMPS = ("data.seq_len_ramp=[[0,32],[1K,64]]", "data.batch_ramp=[[0,4],[2048,8]]")
PLAN = [Segment(0, 8, 32, 4), Segment(8, 4, 64, 4), Segment(12, 4, 64, 8)]


def _data(*pairs: str) -> DataConfig:
    from cpt.config import apply_overrides, build

    data: dict = {}
    apply_overrides(data, [f"data.{p.split('data.', 1)[-1]}" for p in pairs] + ["data.micro_batch_size=2"])
    return build(DataConfig, data["data"], "test")


def test_the_step_plan_follows_the_ramps_in_tokens_or_steps():
    assert amount("252M", "k") == 252_000_000 and amount("2.87T", "k") == 2_870_000_000_000
    assert amount(4096, "k") == 4096 and amount("1K", "k") == 1000
    # 1K is 1,000 tokens: step 8 is the first to start past it (8 steps of 128 tokens), as with 1024
    assert step_plan(_data(*RAMPS), 4096, SEQ_LEN, 2) == PLAN


def test_the_step_plan_changes_at_the_first_step_past_each_boundary():
    segments = step_plan(_data("data.seq_len_ramp=[[0,32],[1024,64]]", "data.batch_ramp=[[0,4],[2048,8]]"),
                         4096, SEQ_LEN, 2)  # fmt: skip
    assert segments == PLAN
    assert sum(s.steps * s.batch * s.seq_len for s in segments) == 4096
    by_steps = step_plan(
        _data("data.seq_len_ramp=[[0,32],[8,64]]", "data.batch_ramp=[[0,4],[12,8]]", "data.ramp_unit=steps"),
        4096, SEQ_LEN, 2,
    )  # fmt: skip
    assert by_steps == PLAN
    # no ramp: the stage's length, the configured batch, as many whole steps as the stage's sequences make
    assert step_plan(_data(), 4096, SEQ_LEN, 2) == [Segment(0, 16, SEQ_LEN, 4)]


@pytest.mark.parametrize(
    ("pairs", "key"),
    [
        (("data.batch_ramp=[[0,3]]",), "data.batch_ramp[0]"),  # not whole micro-batches of 2 ranks
        (("data.seq_len_ramp=[[0,128]]",), "data.seq_len_ramp[0]"),  # longer than the stage
        (("data.seq_len_ramp=[[10,32]]",), "data.seq_len_ramp"),  # does not start at 0
        (("data.seq_len_ramp=[[0,32],[0,64]]",), "data.seq_len_ramp"),
        (("data.batch_ramp=[[0,x]]",), "data.batch_ramp[0]"),
    ],
)
def test_a_bad_ramp_is_one_line_naming_its_key(pairs, key):
    with pytest.raises(ConfigError) as e:
        step_plan(_data(*pairs), 4096, SEQ_LEN, 2)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


@pytest.fixture
def one_source(tmp_path):
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": "test"}')
    lengths = np.random.default_rng(1).integers(1, 120, 150).tolist()
    folder = doc_folder(tmp_path / "zh", 1000, lengths, tok)
    stage = Stage(
        name="r", seq_len=64, tokens=sum(lengths) - 200, seed=7,
        sources=[Source(name="zh", path=str(folder), weight=1.0)],
        replay=Replay(share=0.0, sources=[]),
    )  # fmt: skip
    return plan(stage, "r.yaml"), lengths


def _ramped(manifest: dict, world: int = 1, micro: int = 2) -> list[Segment]:
    data = _data("data.seq_len_ramp=[[0,16],[1500,32],[3000,64]]", "data.batch_ramp=[[0,2],[4000,6]]")
    data.micro_batch_size = micro
    return step_plan(data, manifest["tokens"], 64, world)


def test_across_length_and_batch_boundaries_the_loader_reads_the_documents_in_order_once(one_source):
    manifest, lengths = one_source
    segments = _ramped(manifest)
    assert len({(s.seq_len, s.batch) for s in segments}) == 4  # three boundaries inside the stage
    loader = PackedLoader(manifest, batch_size=2, lengths=plan_sequences(segments))
    batches = list(loader)
    shapes = [tuple(b["input_ids"].shape) for b in batches]
    expected = [(2, s.seq_len) for s in segments for _ in range(s.steps * s.batch // 2)]
    assert shapes == expected
    stream = torch.cat([b["input_ids"].reshape(-1) for b in batches]).numpy()
    # the concatenated sequences are the documents in the seeded order, each whole, none twice
    order = DocumentOrder(len(lengths), order_key(manifest["seed"], "zh", 0))(np.arange(len(lengths)))
    expect = np.concatenate([np.full(lengths[d], 1000 + d) for d in order])[: len(stream)]
    assert np.array_equal(stream, expect)
    assert len(stream) == sum(s.steps * s.batch * s.seq_len for s in segments) < sum(lengths)


def test_a_resume_at_every_batch_across_the_boundaries_is_exact(one_source):
    manifest, _ = one_source
    lengths = plan_sequences(_ramped(manifest, world=2, micro=1))
    whole = PackedLoader(manifest, rank=1, world=2, batch_size=1, lengths=lengths)
    reference = [b["input_ids"].clone() for b in whole]
    loader = PackedLoader(manifest, rank=1, world=2, batch_size=1, lengths=lengths)
    states = []
    for _ in loader:
        states.append(loader.state_dict())
    for k in range(0, len(states) - 1, 7):
        resumed = PackedLoader(manifest, rank=1, world=2, batch_size=1, lengths=lengths)
        resumed.load_state_dict(states[k])
        rest = [b["input_ids"] for b in resumed]
        assert len(rest) == len(reference) - k - 1
        assert all(torch.equal(a, b) for a, b in zip(rest, reference[k + 1 :], strict=True)), k


def test_runs_that_split_a_micro_batch_are_refused(one_source):
    manifest, _ = one_source
    with pytest.raises(ValueError, match="whole rows"):
        PackedLoader(manifest, world=2, batch_size=2, lengths=[(6, 16), (8, 32)]).__len__()


def _schedule(total: int, anneal: int = 0, scale=None) -> Schedule:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return Schedule(optimizer, ScheduleConfig(kind="constant", warmup_ratio=0.0, min_lr=0.0), 1.0, total,
                    anneal, scale)  # fmt: skip


def test_the_anneal_decays_linearly_to_zero_at_the_last_step_and_the_sqrt_rule_scales_the_batch():
    schedule = _schedule(10, anneal=4)
    assert [schedule.multiplier(s) for s in range(10)] == [1.0] * 6 + [0.75, 0.5, 0.25, 0.0]
    cosine = Schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                      ScheduleConfig(kind="cosine", warmup_ratio=0.0, min_lr=0.1), 1.0, 10, 3)  # fmt: skip
    start = cosine._multiplier(7, [])
    assert [cosine.multiplier(s) for s in (7, 8, 9)] == pytest.approx([start * 2 / 3, start / 3, 0.0])
    ramp = _schedule(4, scale=lambda step: (2 if step < 2 else 8) ** 0.5 / 8**0.5)
    assert [ramp.multiplier(s) for s in range(4)] == pytest.approx([0.5, 0.5, 1.0, 1.0])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The small trainer set-up, with a stage that anneals over its last 1,024 tokens."""
    found = build_small_setup(tmp_path_factory.mktemp("ramps"))
    root = found["root"]
    stage = Stage(
        name="t", seq_len=SEQ_LEN, tokens=SEQ_LEN * 4 * 16, seed=5, anneal_tokens=1024,
        sources=[Source(name="zh_web", path=str(root / "tokens" / "zh_web"), weight=1.0)],
        replay=Replay(share=0.25, sources=[Source(name="en_web", path=str(root / "tokens" / "en_web"))]),
    )  # fmt: skip
    write_stage_manifest(plan(stage), root / "anneal_mix")
    found["manifest"] = root / "anneal_mix" / "manifest.json"
    return found


RUN = (
    "--set", "data.seq_len_ramp=[[0,32],[1024,64]]", "--set", "data.batch_ramp=[[0,4],[2048,8]]",
    "--set", "checkpoint.every=2", "--set", "eval.every=6", "--set", "schedule.kind=constant",
    "--set", "eval.sets=[{name: zh_short, path: PATH, sequences: 2, seq_len: 32}]",
    "--set", "eval.needle={set: zh_short, lengths: [64], depths: [0, 100], trials: 1}",
)  # fmt: skip


def _run_args(setup) -> tuple[str, ...]:
    path = setup["root"] / "tokens" / "heldout_zh"
    return tuple(a.replace("PATH", str(path)) for a in RUN)


def test_a_ramped_annealed_run_killed_and_resumed_across_each_boundary_ends_as_the_uninterrupted_one(
    setup, tmp_path
):
    import time

    args = _run_args(setup)
    whole = tmp_path / "whole"
    proc = run_train(setup, whole, *args)
    assert "16 steps: 8 of 128 tokens" in proc.stdout + proc.stderr
    ref = read_metrics(whole)
    assert max(ref) == 16 and ref[16]["tokens_seen"] == 4096
    assert [ref[s]["seq_len"] for s in (1, 8, 9, 12, 13, 16)] == [32, 32, 64, 64, 64, 64]
    assert [ref[s]["batch_sequences"] for s in (1, 12, 13, 16)] == [4, 4, 8, 8]
    # the anneal: the last 1,024 tokens are the last two steps of 512; the LR reaches zero at the last one
    assert ref[16]["lr"] == 0.0 and ref[15]["lr"] == pytest.approx(ref[14]["lr"] * 0.5)
    # the sqrt rule: the batches of 4 run at sqrt(4/8) of the LR (constant after warmup here)
    assert ref[12]["lr"] == pytest.approx(ref[13]["lr"] * 0.5**0.5)
    assert "eval/zh_short/ppl" in ref[0] and "eval/zh_short/ppl" in ref[12]
    for step in (0, 12, 16):  # the needle check at every evaluation, at the stage's full length
        assert {"needle/L64/d0", "needle/L64/d100", "needle/accuracy"} <= set(ref[step]), step
        assert 0.0 <= ref[step]["needle/accuracy"] <= 1.0

    out = tmp_path / "interrupted"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    # killed (-9, every process) once its step-6 checkpoint exists: before the length boundary at step 8
    first = subprocess.Popen(train_cmd(setup, out, *args, "--resume", "auto"), cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.time() + 600
    while not (out / "checkpoints" / "step_00000006").is_dir():
        assert first.poll() is None and time.time() < deadline, "no step-6 checkpoint"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    # resumed across the length boundary, stopped at step 11; resumed across the batch boundary to the end
    run_train(setup, out, *args, "--resume", "auto", "--set", "max_steps=11")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000011"
    run_train(setup, out, *args, "--resume", "auto")
    resumed = read_metrics(out)
    for step in range(1, 17):
        assert resumed[step]["loss"] == ref[step]["loss"], step  # bit for bit
        assert resumed[step]["lr"] == ref[step]["lr"], step
    assert resumed[16]["eval/zh_short/ppl"] == ref[16]["eval/zh_short/ppl"]
    assert resumed[16]["needle/accuracy"] == ref[16]["needle/accuracy"]


def test_a_resume_with_other_ramps_for_the_steps_taken_is_refused(setup, tmp_path):
    args = _run_args(setup)
    out = tmp_path / "run"
    shared = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    run_train(setup, out, *args, "--set", "max_steps=9")
    # DeepSpeed's CPU all-reduce segments (67 MB a rank, memory) are not left behind in /dev/shm
    assert not set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*")) - shared
    other = [a.replace("[1024,64]", "[512,64]") for a in args]
    proc = subprocess.run(train_cmd(setup, out, *other, "--resume"), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, timeout=900)  # fmt: skip
    assert proc.returncode == 2 and "data.seq_len_ramp" in proc.stderr, proc.stderr[-2000:]


def test_a_min_tokens_source_reads_only_its_long_documents_in_order_and_resumes_exactly(tmp_path):
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": "test"}')
    lengths = np.random.default_rng(2).integers(1, 200, 300).tolist()
    folder = doc_folder(tmp_path / "zh", 1000, lengths, tok)
    long = [i for i, n in enumerate(lengths) if n >= 100]
    stage = Stage(
        name="m", seq_len=64, tokens=sum(lengths[i] for i in long) - 64, seed=3,
        sources=[Source(name="zh", path=str(folder), weight=1.0, min_tokens=100)],
        replay=Replay(share=0.0, sources=[]),
    )  # fmt: skip
    manifest = plan(stage, "m.yaml")
    assert manifest["sources"][0]["documents_qualifying"] == len(long)
    lengths_plan = plan_sequences(_ramped(manifest))
    batches = list(PackedLoader(manifest, batch_size=2, lengths=lengths_plan))
    stream = torch.cat([b["input_ids"].reshape(-1) for b in batches]).numpy()
    order = DocumentOrder(len(lengths), order_key(3, "zh", 0))(np.arange(len(lengths)))
    expect = np.concatenate([np.full(lengths[d], 1000 + d) for d in order if lengths[d] >= 100])
    assert np.array_equal(stream, expect[: len(stream)])  # the long documents, in order, each once
    loader = PackedLoader(manifest, batch_size=2, lengths=lengths_plan)
    for k, _ in enumerate(loader):
        if k == 5:
            break
    resumed = PackedLoader(manifest, batch_size=2, lengths=lengths_plan)
    resumed.load_state_dict(loader.state_dict())
    rest = [b["input_ids"] for b in resumed]
    assert all(torch.equal(a, b["input_ids"]) for a, b in zip(rest, batches[6:], strict=True))
