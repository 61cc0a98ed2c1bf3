"""The DeepSpeed trainer on CPU: document masking, schedules, config errors, two-rank kill-and-resume,
training modes, a new stage from another run, and export to a Hugging Face folder that generates."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from cpt.report.collect import read_metrics
from trainer.schedule import lr_multiplier
from trainer_setup import SEQ_LEN, build_small_setup, packed_and_alone_losses, run_train, train_cmd

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_small_setup(tmp_path_factory.mktemp("trainer"))


# a planned re-warm at optimizer step 10 (of 16): the interrupted runs below must follow it exactly once
RESTART = ("--set", "schedule.restarts=[10]")


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted two-rank run of the whole stage, re-warmed at step 10 as planned."""
    out = setup["root"] / "runs" / "reference"
    done = next(line for line in run_train(setup, out, *RESTART).stdout.splitlines() if "done: " in line)
    ppl = read_metrics(out)[16]
    # the last line gives the final held-out perplexities
    assert (
        f"held-out perplexity en_old {ppl['eval/en_old/ppl']:.2f}, zh_new {ppl['eval/zh_new/ppl']:.2f}"
        in done
    )
    return out


def test_a_packed_document_has_the_same_loss_as_alone(setup):
    from trainer.config import TrainConfig
    from trainer.model import load_model

    cfg = TrainConfig(mix="x")
    cfg.model.path = str(setup["model"])
    model, attention = load_model(cfg)
    assert attention == "sdpa"
    model.eval()
    lengths = [20, 30, 14]
    inside, alone, plain = packed_and_alone_losses(model, lengths)
    start = 0
    for n, losses in zip(lengths, alone, strict=True):
        # the pack's losses for this document: targets start+1 .. start+len-1
        assert torch.allclose(inside[start : start + n - 1], losses, atol=1e-5)
        start += n
    # and the masking matters: one sequence of all three (no restarts) gives other losses
    assert not torch.allclose(plain[20:48], inside[20:48], atol=1e-3)


def test_schedules_warm_up_decay_to_the_floor_and_depend_on_the_step_only():
    total = 100
    cos = [lr_multiplier(s, total, "cosine", 0.1, 0.1) for s in range(total)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(cos[9:], cos[10:], strict=False))
    assert cos[-1] == pytest.approx(0.1)
    wsd = [lr_multiplier(s, total, "wsd", 0.1, 0.0, decay_ratio=0.2) for s in range(total)]
    assert wsd[10:80] == [1.0] * 70 and wsd[-1] == pytest.approx(0.0) and 0 < wsd[85] < 1
    assert [lr_multiplier(s, total, "constant", 0.1, 0.0) for s in (0, 50, 99)] == [0.1, 1.0, 1.0]


def test_config_and_manifest_errors_are_one_line_and_name_the_fix(setup, tmp_path):
    def main_py(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "trainer/main.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300
        )

    proc = main_py("--mix", "no_such_stage", "--model", str(setup["model"]))
    assert proc.returncode == 2 and "cpt-mix build" in proc.stderr
    proc = main_py("--mix", str(setup["manifest"]), "--model", str(setup["model"]), "optim.lrr=1")
    assert proc.returncode == 2 and "optim.lrr: unknown key" in proc.stderr
    proc = main_py("--mix", str(setup["manifest"]), "--config", str(setup["config"]), "--dry-run")
    assert proc.returncode == 0 and "32 steps of" in proc.stdout  # one rank: 64 sequences / 2
    edited = tmp_path / "manifest.json"
    data = json.loads(Path(setup["manifest"]).read_text())
    data["seed"] = 6
    edited.write_text(json.dumps(data))
    proc = main_py("--mix", str(edited), "--model", str(setup["model"]))
    assert proc.returncode == 2 and "manifest_hash" in proc.stderr and "cpt-mix build" in proc.stderr


def test_a_model_that_does_not_read_the_shards_is_refused_before_deepspeed_starts(setup, tmp_path):
    def dry_run(model: Path, *extra: str) -> subprocess.CompletedProcess:
        args = ["--mix", str(setup["manifest"]), "--config", str(setup["config"]), "--model", str(model)]
        return subprocess.run(
            [sys.executable, "trainer/main.py", *args, "--dry-run", *extra],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def model_copy(name: str) -> Path:
        folder = tmp_path / name
        shutil.copytree(setup["model"], folder)
        return folder

    assert dry_run(setup["model"]).returncode == 0
    untokenized = model_copy("no_tokenizer")
    (untokenized / "tokenizer.json").unlink()
    proc = dry_run(untokenized)
    assert proc.returncode == 2 and "no tokenizer.json" in proc.stderr and "init-embeddings" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    other = model_copy("other_tokenizer")  # the same vocabulary, other bytes: not provably the same
    tokenizer = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    (other / "tokenizer.json").write_text(json.dumps(tokenizer, indent=1), encoding="utf-8")
    proc = dry_run(other)
    assert proc.returncode == 2 and "not the one the stage's shards were made with" in proc.stderr
    small = model_copy("too_few_rows")  # the shards' tokenizer, but fewer embedding rows than its ids
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    proc = dry_run(small)
    assert (
        proc.returncode == 2 and "embedding rows" in proc.stderr and "cpt-tok init-embeddings" in proc.stderr
    )
    # an eval set tokenized with another tokenizer
    heldout = tmp_path / "heldout_other"
    shutil.copytree(setup["root"] / "tokens" / "heldout_en", heldout)
    meta = json.loads((heldout / "tokens.json").read_text())
    (heldout / "tokens.json").write_text(json.dumps({**meta, "tokenizer_sha256": "0" * 64}))
    proc = dry_run(setup["model"], "--set", f"eval.sets=[{{name: en_old, path: {heldout}}}]")
    assert proc.returncode == 2 and "eval.sets[0].path" in proc.stderr and "another tokenizer" in proc.stderr


def _ranks(launcher: subprocess.Popen) -> list:
    """The trainer's rank processes under a deepspeed launcher, and their loader workers: what Slurm
    signals (every process of the job step), less the launcher, which only waits for them."""
    import psutil

    # each process once, as Slurm signals it (a loader worker, forked from its rank, shares its command line)
    processes = psutil.Process(launcher.pid).children(recursive=True)
    return [p for p in processes if "--local_rank" in " ".join(p.cmdline())]


def _first_errors(log: Path) -> str:
    """The lines that name an error, first ones first: where several ranks fail, the first cause."""
    return "\n".join([line for line in log.read_text().splitlines() if "Error" in line][:20])


def _wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.time() + 600
    while time.time() < deadline and not condition():
        time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before {what}"
    assert condition(), f"no {what} within 10 minutes"


def test_killed_then_signalled_around_a_planned_restart_a_run_ends_as_if_uninterrupted(
    setup, reference, tmp_path
):
    ref = read_metrics(reference)
    assert max(ref) == 16 and all("loss" in ref[s] for s in range(1, 17))
    assert ref[16]["loss"] < ref[1]["loss"]  # it learns
    assert {"loss/zh_web", "loss/en_web", "lr", "grad_norm", "tokens_per_s", "tflops_per_device",
            "tflops_per_device_docs"} <= set(ref[1])  # fmt: skip
    assert {"eval/en_old/ppl", "eval/zh_new/ppl"} <= set(ref[0]) and "eval/zh_new/ppl" in ref[16]
    assert ref[16]["tokens_seen"] == 16 * 2 * 2 * SEQ_LEN
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    # the planned restart: metrics step 11 is optimizer step 10, back at the peak (warmup of 10% of 6 steps)
    assert ref[11]["lr"] == pytest.approx(3.0e-3) and ref[10]["lr"] < ref[11]["lr"] > ref[16]["lr"]

    out, log = tmp_path / "interrupted", tmp_path / "stopped.log"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    # 1. `--resume auto` on an empty folder starts the run; kill -9, every process, after step 8 (before
    # the restart)
    first = subprocess.Popen(
        train_cmd(setup, out, *RESTART, "--resume", "auto"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    _wait_for(lambda: (out / "checkpoints" / "step_00000008").is_dir(), first, "its step-8 checkpoint")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert (out / "checkpoints" / "latest").read_text().strip() in ("step_00000004", "step_00000008")

    # 2. the same command resumes; SIGUSR1 to every rank (as Slurm's --signal sends it) after the restart:
    # a checkpoint at the next step boundary, then exit status 75
    with open(log, "w") as stderr:
        second = subprocess.Popen(
            train_cmd(setup, out, *RESTART, "--resume", "auto"), cwd=REPO, env=env, stdout=stderr,
            stderr=stderr, start_new_session=True,
        )  # fmt: skip
        _wait_for(lambda: max(read_metrics(out), default=0) >= 11, second, "step 11")
        for process in _ranks(second):
            process.send_signal(signal.SIGUSR1)
        assert second.wait(timeout=600) == 75, _first_errors(log)
    stopped_at = int((out / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 11 <= stopped_at < 16 and "stopped by SIGUSR1" in log.read_text()
    assert (out / "checkpoints" / f"step_{stopped_at:08d}").is_dir()  # saved where it stopped

    # 3. and once more: it finishes; every step's loss and LR are those of the uninterrupted run
    run_train(setup, out, *RESTART, "--resume", "auto")
    resumed = read_metrics(out)
    for step in range(1, 17):
        assert resumed[step]["loss"] == ref[step]["loss"], step  # bit for bit
        assert resumed[step]["lr"] == ref[step]["lr"], step
        assert resumed[step]["grad_norm"] == ref[step]["grad_norm"], step
    assert resumed[16]["eval/zh_new/ppl"] == ref[16]["eval/zh_new/ppl"]
    kept = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert kept == ["step_00000012", "step_00000016"] or kept == [f"step_{stopped_at:08d}", "step_00000016"]


def test_a_run_refuses_to_overwrite_itself(setup, reference):
    proc = subprocess.run(
        train_cmd(setup, reference, ranks=1), cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0 and "--resume" in (proc.stdout + proc.stderr)


def test_export_loads_in_transformers_and_generates(setup, reference, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export import main as export_main

    out = tmp_path / "hf"
    assert export_main(["--checkpoint", str(reference), "--output", str(out)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert next(model.parameters()).dtype == torch.bfloat16 and (out / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = tokenizer("The", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    # the exported weights are the trained ones, not the initial ones
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    assert not torch.allclose(
        base.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight.float()
    )


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(folder / "model.safetensors").items()}


def test_embeddings_and_lora_modes_train_what_they_should(setup, tmp_path):
    from trainer.export import export

    base = _weights(setup["model"])
    for mode in ("embeddings", "lora"):
        out = tmp_path / mode
        run_train(
            setup, out, f"mode={mode}", "max_steps=3", "eval.sets=[]", "lora.r=4", "lora.alpha=8", ranks=1
        )
        after = _weights(export(out, tmp_path / f"{mode}_hf", dtype=torch.float32))
        changed = {k for k in base if not torch.equal(base[k], after[k])}
        assert {"model.embed_tokens.weight", "lm_head.weight"} <= changed, mode
        if mode == "embeddings":
            assert changed == {"model.embed_tokens.weight", "lm_head.weight"}
        else:  # LoRA merged into the targeted projections; norms untouched
            assert "model.layers.0.self_attn.q_proj.weight" in changed
            assert not any("norm" in k for k in changed)


def test_init_from_starts_a_new_stage_from_another_runs_weights_held_in_memory(setup, reference, tmp_path):
    from trainer.export import export

    out = tmp_path / "next_stage"
    run_train(setup, out, "--init-from", f"{reference}:step_00000012", "max_steps=2", "eval.sets=[]")
    metrics = read_metrics(out)
    assert sorted(metrics) == [1, 2]
    # fresh schedule: warming up again from the start
    assert metrics[1]["lr"] == pytest.approx(3.0e-3 * lr_multiplier(0, 16, "cosine", 0.1, 0.1))
    ref = read_metrics(reference)
    assert metrics[1]["loss"] < ref[1]["loss"] and math.isfinite(metrics[2]["loss"])
    # nothing written to start it: the model folder it records is the source run's
    assert not (out / "init").exists()
    recorded = json.loads((out / "config.json").read_text())["model"]["path"]
    assert Path(recorded) == Path(setup["model"]).resolve()
    # both ranks train on the checkpoint's weights: the same losses as a run started from its export
    exported = export(reference, tmp_path / "step12", tag="step_00000012", dtype=torch.float32)
    run_train(setup, tmp_path / "from_export", "--model", str(exported), "max_steps=2", "eval.sets=[]")
    from_export = read_metrics(tmp_path / "from_export")
    for step in (1, 2):
        assert metrics[step]["loss"] == pytest.approx(from_export[step]["loss"], rel=1e-6), step


def test_ema_weights_are_evaluated_alongside_and_survive_a_resume(setup, tmp_path):
    out = tmp_path / "ema"
    common = ["ema=0.5", "eval.every=2", "checkpoint.every=2", "log.every=1"]
    run_train(setup, out, *common, "max_steps=2", ranks=1)
    run_train(setup, out, *common, "max_steps=4", "--resume", ranks=1)
    metrics = read_metrics(out)
    assert sorted(metrics) == [0, 1, 2, 3, 4]
    for step in (2, 4):
        assert "eval_ema/zh_new/ppl" in metrics[step]
        assert metrics[step]["eval_ema/zh_new/loss"] != metrics[step]["eval/zh_new/loss"]
    assert (out / "checkpoints" / "step_00000004" / "ema.pt").is_file()


@pytest.mark.parametrize(("zero", "ranks"), [(0, 1), (3, 2)])
def test_zero_stages_train_resume_and_export(setup, tmp_path, zero, ranks):
    from trainer.export import export

    out = tmp_path / f"zero{zero}"
    common = [f"deepspeed.zero_stage={zero}", "eval.sets=[]", "checkpoint.every=2"]
    run_train(setup, out, *common, "max_steps=2", ranks=ranks)
    run_train(setup, out, *common, "max_steps=3", "--resume", ranks=ranks)
    metrics = read_metrics(out)
    assert sorted(metrics) == [1, 2, 3] and all(math.isfinite(m["loss"]) for m in metrics.values())
    weights = _weights(export(out, tmp_path / "hf", dtype=torch.float32))
    assert not torch.equal(weights["lm_head.weight"], _weights(setup["model"])["lm_head.weight"])


def test_set_overrides_and_the_older_positional_spelling_resolve_alike(setup):
    from trainer.main import parse_args

    args = parse_args(["--mix", "m", "optim.lr=1", "--set", "optim.lr=2", "--set", "max_steps=3"])
    assert args.overrides == ["optim.lr=1", "optim.lr=2", "max_steps=3"]  # the --set ones win
    args = parse_args(["--resume", "max_steps=5", "--set", "seed=1"])
    assert args.resume == "latest" and args.overrides == ["max_steps=5", "seed=1"]

    def dry_run(*overrides: str) -> str:
        proc = subprocess.run(
            [sys.executable, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
             "--dry-run", *overrides],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    spelled = dry_run("--set", "max_steps=5", "--set", "optim.lr=1e-3")
    assert "5 steps of" in spelled and '"lr": 0.001' in spelled
    assert dry_run("max_steps=5", "optim.lr=1e-3") == spelled


def test_ablate_grid_errors_name_each_key_path(tmp_path):
    from cpt.config import ConfigError
    from trainer.ablate import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: g\nconfig: c.yaml\nbase: {model: m, stage: s.yaml}\nstage: s.yaml\nsteps: 4\n"
        "eval: {old: a, new: b, extra: 1}\ncenter: {lr_scale: 1, resume: continue}\n"
        "axes: {lr_scale: [1, -2, x], resume: [continue, warm]}\nmood: 1\n"
    )
    with pytest.raises(ConfigError) as error:
        load_grid(grid)
    assert [p.split(":")[0] for p in error.value.problems] == [
        "mood", "eval.extra", "axes.lr_scale[1]", "axes.lr_scale[2]", "axes.resume[1]", "base.steps"
    ]  # fmt: skip
    assert str(error.value).startswith(f"{grid}: 6 problems")
    grid.write_text("name: g\nconfig: c.yaml\nbase: {model: m}\nstage: s.yaml\nsteps: 4\n"
                    "eval: {old: a, new: b}\nmode: product\naxes: {resume: [rewarm, constant], lr_scale: [2]}\n")  # fmt: skip
    loaded = load_grid(grid)
    assert list(loaded.axes) == ["resume", "lr_scale"] and loaded.center == {} and loaded.eval.new == "b"


def test_a_stop_signal_waits_for_the_step_and_a_forked_loader_worker_leaves_it_to_its_rank():
    import multiprocessing

    from trainer.main import StopSignals

    before = signal.getsignal(signal.SIGUSR1)
    try:
        signals = StopSignals(["SIGUSR1"])
        worker = multiprocessing.get_context("fork").Process(target=time.sleep, args=(3.0,))
        worker.start()
        time.sleep(0.5)
        for _ in range(2):  # twice: the second of the same signal would end a rank at once
            os.kill(worker.pid, signal.SIGUSR1)
            time.sleep(0.2)
        worker.join(10)
        assert worker.exitcode == 0  # the worker lived on to serve its rank
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signals.received == "SIGUSR1"  # the rank noted it, and goes on to its step boundary
    finally:
        signal.signal(signal.SIGUSR1, before)
