"""Misuse of the trainer and its checkpoints, run through the real commands (`trainer/main.py`,
`trainer/export.py`, `cpt-tok init-embeddings`): an --output over the model, a run folder whose
`latest` is missing or stale, damaged and crafted checkpoints, every spelling of a checkpoint tag, eval
sets that are not token shards. Each probe expects one line naming the file or key (exit 2), or the
checkpoint it resolves to; one trained run is shared and copied per probe, and what can be refused
before DeepSpeed starts is checked with `--dry-run` or refused before it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import REPO, data_path
from cpt.report.collect import read_metrics
from trainer_setup import build_small_setup

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs

STEPS = ["max_steps=3", "checkpoint.every=1", "checkpoint.keep=5", "eval.sets=[]"]


def _env() -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env())


def _train_argv(s: dict, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "trainer/main.py", "--mix", str(s["manifest"]), "--config", str(s["config"]),
            "--output", str(output), *extra]  # fmt: skip


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _lines(proc: subprocess.CompletedProcess, prefix: str) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(prefix)]


def _one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = _lines(proc, "error:")
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]


class _RunsCode:
    """Unpickled without restriction, it creates `marker`: a stand-in for any code a crafted file runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    return build_small_setup(tmp_path_factory.mktemp("hostile_trainer"))


@pytest.fixture(scope="module")
def trained(setup) -> Path:
    """One rank, three steps, a checkpoint after each: step_00000001 .. step_00000003, latest = 3."""
    out = setup["root"] / "runs" / "trained"
    proc = _run(_train_argv(setup, out, *STEPS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    return out


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


# -- the probes: each prepares its case in a copy of the trained run and returns (command, folder
# that must come out byte-identical or None); the test checks exit code and the one line ------------
Prepare = Callable[[dict, Path, Path], tuple[list[str], Path | None]]


def output_is_model(s, run, tmp):
    return _train_argv(s, s["model"]), s["model"]


def output_inside_model(s, run, tmp):
    return _train_argv(s, s["model"] / "run"), s["model"]


def model_inside_output(s, run, tmp):
    model = shutil.copytree(s["model"], tmp / "out" / "model")
    return _train_argv(s, tmp / "out", "--model", str(model)), model


def latest_missing(s, run, tmp):
    (run / "checkpoints" / "latest").unlink()
    return _train_argv(s, run, *STEPS), run


def latest_stale(s, run, tmp):  # names a folder that is gone
    shutil.rmtree(ckpt(run, 3))
    return _train_argv(s, run, *STEPS), run


def latest_escapes(s, run, tmp):  # a pointer is a name, never a path to follow
    (run / "checkpoints" / "latest").write_text("../../../\n")
    return _train_argv(s, run, "--resume", "--dry-run"), None


def resume_stale_latest(s, run, tmp):
    (run / "checkpoints" / "latest").write_text("step_00000099\n")
    return _train_argv(s, run, "--resume", "--dry-run"), None


def resume_spelling(spelling: str) -> Prepare:
    return lambda s, run, tmp: (_train_argv(s, run, "--resume", spelling, "--dry-run"), None)


def resume_before_overrides(s, run, tmp):  # `--resume key=value`: the override is not a tag
    return _train_argv(s, run, "--resume", "max_steps=5", "--dry-run"), None


def resume_unknown_tag(s, run, tmp):
    return _train_argv(s, run, "--resume", "step_9"), run


def resume_nothing(s, run, tmp):
    return _train_argv(s, tmp / "empty", "--resume"), None


def model_not_a_model(s, run, tmp):
    (tmp / "weights").mkdir()
    return _train_argv(s, tmp / "fresh", "--model", str(tmp / "weights")), None


def init_from_spelling(spelling: str) -> Prepare:
    return lambda s, run, tmp: (
        _train_argv(s, tmp / "next", "--init-from", f"{run}:{spelling}", "--dry-run"),
        run,
    )


def init_from_unknown_tag(s, run, tmp):
    return _train_argv(s, tmp / "next", "--init-from", f"{run}:step_7"), run


def init_from_not_a_run(s, run, tmp):
    return _train_argv(s, tmp / "next", "--init-from", str(s["model"])), s["model"]


def truncated_newest(s, run, tmp):
    states = ckpt(run, 3) / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:1000])
    return _train_argv(s, run, "--resume", "--dry-run"), run


def truncated_named(s, run, tmp):  # a checkpoint named by the user is not swapped for another
    optim = ckpt(run, 3) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    optim.write_bytes(optim.read_bytes()[:-200])
    return _train_argv(s, run, "--resume", "step_3"), run


def rng_file_missing(s, run, tmp):
    (ckpt(run, 3) / "rng_rank0.pt").unlink()
    return _train_argv(s, run, "--resume", "--dry-run"), run


def all_damaged(s, run, tmp):
    for step in (1, 2, 3):
        (ckpt(run, step) / "mp_rank_00_model_states.pt").write_bytes(b"")
    return _train_argv(s, run, "--resume"), run


def crafted_torch_save(s, run, tmp):  # a torch.save archive whose pickle runs code, where DeepSpeed reads
    torch.save({"x": _RunsCode(tmp / "MARKER")}, ckpt(run, 3) / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return _train_argv(s, run, "--resume"), run


def crafted_rng_file(s, run, tmp):  # ... or where the trainer reads
    torch.save({"torch": _RunsCode(tmp / "MARKER")}, ckpt(run, 3) / "rng_rank0.pt")
    return _train_argv(s, run, "--resume"), run


def crafted_behind_damaged(s, run, tmp):  # falling back never loads a crafted older checkpoint
    (ckpt(run, 3) / "mp_rank_00_model_states.pt").write_bytes(b"x")
    torch.save({"module": _RunsCode(tmp / "MARKER")}, ckpt(run, 2) / "mp_rank_00_model_states.pt")
    return _train_argv(s, run, "--resume"), run


def crafted_raw_pickle(s, run, tmp):  # a plain pickle: not even opened as one
    with open(ckpt(run, 2) / "mp_rank_00_model_states.pt", "wb") as f:
        pickle.dump({"module": _RunsCode(tmp / "MARKER")}, f)
    return _train_argv(s, run, "--resume", "2"), run


def crafted_init_from(s, run, tmp):
    torch.save({"x": _RunsCode(tmp / "MARKER")}, ckpt(run, 3) / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return _train_argv(s, tmp / "next", "--init-from", str(run)), run


def crafted_export(s, run, tmp):
    torch.save({"x": _RunsCode(tmp / "MARKER")}, ckpt(run, 2) / "mp_rank_00_model_states.pt")
    return [sys.executable, "trainer/export.py", "--checkpoint", str(run), "--step", "2", "--output",
            str(tmp / "hf")], run  # fmt: skip


def export_unknown_step(s, run, tmp):
    return [sys.executable, "trainer/export.py", "--checkpoint", str(run), "--step", "step_8", "--output",
            str(tmp / "hf")], run  # fmt: skip


def eval_set(path_of: Callable[[dict, Path], Path]) -> Prepare:
    def prepare(s, run, tmp):
        sets = f"eval.sets=[{{name: held, path: {path_of(s, tmp)}}}]"
        return _train_argv(s, tmp / "fresh", sets), None

    return prepare


def _not_token_shards(s, tmp):
    (tmp / "texts").mkdir()
    (tmp / "texts" / "a.txt").write_text("plain text, not token shards\n")
    return tmp / "texts"


def _other_tokenizer(s, tmp):
    folder = shutil.copytree(Path(s["root"]) / "tokens" / "heldout_en", tmp / "heldout")
    meta = json.loads((folder / "tokens.json").read_text())
    meta["tokenizer_sha256"] = "0" * 64
    (folder / "tokens.json").write_text(json.dumps(meta))
    return folder


def _cpt_tok(*args: str) -> list[str]:
    return [sys.executable, "-m", "cpt.tok.cli", *args]


def init_embeddings_no_config(s, run, tmp):
    (tmp / "not_a_model").mkdir()
    tok = str(Path(s["root"]) / "tok")
    return _cpt_tok("init-embeddings", "--model", str(tmp / "not_a_model"), "--base-tokenizer", tok,
                    "--tokenizer", tok, "--output", str(tmp / "extended")), None  # fmt: skip


def output_holds_other_files(s, run, tmp):
    (tmp / "mine").mkdir()
    (tmp / "mine" / "config.json").write_text('{"mine": true}')  # would be written over
    (tmp / "mine" / "notes.txt").write_text("my data")
    return _train_argv(s, tmp / "mine"), tmp / "mine"


def checkpoints_hold_other_files(s, run, tmp):  # a checkpoint save removes folders under checkpoints/
    (tmp / "mine" / "checkpoints" / "step_3.tmp").mkdir(parents=True)  # the trainer's own name for a save
    (tmp / "mine" / "checkpoints" / "step_3.tmp" / "weights.bin").write_text("my data")
    (tmp / "mine" / "checkpoints" / "notes.txt").write_text("my data")
    return _train_argv(s, tmp / "mine"), tmp / "mine"


def init_embeddings_over_model(s, run, tmp):
    tok = str(Path(s["root"]) / "tok")
    return _cpt_tok("init-embeddings", "--model", str(s["model"]), "--base-tokenizer", tok, "--tokenizer",
                    tok, "--output", str(s["model"])), s["model"]  # fmt: skip


def resume_on_other_ranks(s, run, tmp):  # ZeRO 2's optimizer state is split by rank: refused, unwritten
    from trainer_setup import train_cmd

    return train_cmd(s, run, "--resume", *STEPS, ranks=2), run


def _custom_code_model(s, tmp) -> Path:
    """A copy of the model whose config.json names a class in a .py file beside it (`auto_map`), as a
    downloaded folder can: importing that file would create MARKER."""
    folder = shutil.copytree(s["model"], tmp / "custom")
    (folder / "evil.py").write_text(f"open({str(tmp / 'MARKER')!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_custom_code(s, run, tmp):
    return _train_argv(s, tmp / "fresh", "--model", str(_custom_code_model(s, tmp))), None


def eval_custom_code(s, run, tmp):
    model = _custom_code_model(s, tmp)
    return [sys.executable, "-m", "trainer.cli", "eval", "--model", str(model), "--tasks", "mmlu", "--data",
            str(data_path("benchmarks")), "--limit", "1", "--output", str(tmp / "fresh")], model  # fmt: skip


def init_embeddings_custom_code(s, run, tmp):
    tok = str(Path(s["root"]) / "tok")
    model = _custom_code_model(s, tmp)
    return _cpt_tok("init-embeddings", "--model", str(model), "--base-tokenizer", tok, "--tokenizer", tok,
                    "--output", str(tmp / "extended")), model  # fmt: skip


# (id, prepare, exit code, the expected text: in the one `error:` line for exit 2, else in stdout, and
# a `warning:` line when the case passes over a damaged checkpoint)
PROBES = [
    ("output-is-model", output_is_model, 2, "is the --model folder"),
    ("output-inside-model", output_inside_model, 2, "is inside the --model folder"),
    ("model-inside-output", model_inside_output, 2, "holds the --model folder"),
    ("output-holds-other-files", output_holds_other_files, 2,
     "{tmp}/mine holds files a trainer run does not write (notes.txt)"),
    ("checkpoints-hold-other-files", checkpoints_hold_other_files, 2,
     "{tmp}/mine/checkpoints holds files a trainer run does not write (notes.txt)"),
    ("latest-missing", latest_missing, 2, "holds checkpoints (step_00000001, step_00000002, step_00000003)"),
    ("latest-stale", latest_stale, 2, "holds checkpoints (step_00000001, step_00000002): pass --resume"),
    ("latest-escapes", latest_escapes, 0, "resuming from {run}/checkpoints/step_00000003"),
    ("resume-stale-latest", resume_stale_latest, 0, "resuming from {run}/checkpoints/step_00000003"),
    ("resume-latest", resume_spelling("latest"), 0, "resuming from {run}/checkpoints/step_00000003"),
    ("resume-step_2", resume_spelling("step_2"), 0, "resuming from {run}/checkpoints/step_00000002"),
    ("resume-step_00000002", resume_spelling("step_00000002"), 0, "resuming from {run}/checkpoints/step_00000002"),
    ("resume-2", resume_spelling("2"), 0, "resuming from {run}/checkpoints/step_00000002"),
    ("resume-then-override", resume_before_overrides, 0, "5 steps of"),
    ("resume-unknown-tag", resume_unknown_tag, 2,
     "no checkpoint 'step_9'; there are step_00000001, step_00000002, step_00000003"),
    ("resume-without-checkpoints", resume_nothing, 2, "has no complete checkpoint"),
    ("model-not-a-model", model_not_a_model, 2, "model.path: {tmp}/weights: not a Hugging Face model folder"),
    ("init-from-step_2", init_from_spelling("step_2"), 0, "weights from {run}/checkpoints/step_00000002"),
    ("init-from-2", init_from_spelling("2"), 0, "weights from {run}/checkpoints/step_00000002"),
    ("init-from-step_00000002", init_from_spelling("step_00000002"), 0,
     "weights from {run}/checkpoints/step_00000002"),
    ("init-from-unknown-tag", init_from_unknown_tag, 2, "no checkpoint 'step_7'; there are step_00000001"),
    ("init-from-not-a-run", init_from_not_a_run, 2, "not a trainer run folder (it needs config.json and checkpoints/step_N/)"),
    ("truncated-newest-falls-back", truncated_newest, 0, "resuming from {run}/checkpoints/step_00000002"),
    ("truncated-named-checkpoint", truncated_named, 2,
     "step_00000003/zero_pp_rank_0_mp_rank_00_optim_states.pt: not a complete torch.save archive"),
    ("rng-file-missing-falls-back", rng_file_missing, 0, "resuming from {run}/checkpoints/step_00000002"),
    ("every-checkpoint-damaged", all_damaged, 2,
     "step_00000003/mp_rank_00_model_states.pt: not a complete torch.save archive (truncated"),
    ("crafted-torch-save", crafted_torch_save, 2,
     "step_00000003/zero_pp_rank_0_mp_rank_00_optim_states.pt: needs builtins.exec to load"),
    ("crafted-rng-file", crafted_rng_file, 2, "step_00000003/rng_rank0.pt: needs builtins.exec to load"),
    ("crafted-behind-damaged", crafted_behind_damaged, 2, "step_00000002/mp_rank_00_model_states.pt: needs builtins.exec"),
    ("crafted-raw-pickle", crafted_raw_pickle, 2, "step_00000002/mp_rank_00_model_states.pt: not a complete torch.save"),
    ("crafted-init-from", crafted_init_from, 2, "zero_pp_rank_0_mp_rank_00_optim_states.pt: needs builtins.exec"),
    ("crafted-export", crafted_export, 2, "step_00000002/mp_rank_00_model_states.pt: needs builtins.exec"),
    ("export-unknown-step", export_unknown_step, 2, "no checkpoint 'step_8'; there are step_00000001"),
    ("eval-set-missing", eval_set(lambda s, tmp: tmp / "nowhere"), 2, "eval.sets[0].path: {tmp}/nowhere does not exist"),
    ("eval-set-not-token-shards", eval_set(_not_token_shards), 2, "eval.sets[0].path: {tmp}/texts: no tokens.json"),
    ("eval-set-other-tokenizer", eval_set(_other_tokenizer), 2, "written with another tokenizer"),
    ("init-embeddings-no-config", init_embeddings_no_config, 2,
     "{tmp}/not_a_model: not a Hugging Face model folder (no config.json)"),
    ("init-embeddings-over-model", init_embeddings_over_model, 2, "is one of the inputs"),
    ("resume-on-other-ranks", resume_on_other_ranks, 2,
     "step_00000003: saved by 1 ranks under ZeRO stage 2, whose optimizer state is split by rank; this run has 2"),
    ("train-custom-code", train_custom_code, 2, "{tmp}/custom/config.json: names custom code (auto_map"),
    ("eval-custom-code", eval_custom_code, 2, "{tmp}/custom/config.json: names custom code (auto_map"),
    ("init-embeddings-custom-code", init_embeddings_custom_code, 2, "{tmp}/custom/config.json: names custom code"),
]  # fmt: skip
FALLS_BACK = {"truncated-newest-falls-back": "mp_rank_00_model_states.pt", "rng-file-missing-falls-back":
              "rng_rank0.pt: missing"}  # fmt: skip


@pytest.mark.parametrize(("prepare", "code", "expected"), [p[1:] for p in PROBES], ids=[p[0] for p in PROBES])
def test_trainer_probe(setup, trained, tmp_path, request, prepare, code, expected):
    run = shutil.copytree(trained, tmp_path / "run")
    argv, protected = prepare(setup, run, tmp_path)
    before = _digest(protected) if protected else None
    proc = _run(argv)
    expected = expected.format(run=run, tmp=tmp_path)
    if code == 2:
        _one_line_error(proc, expected)
    else:
        assert proc.returncode == code, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and expected in proc.stdout, proc.stdout[-2000:] + proc.stderr
    case = request.node.callspec.id
    warnings = _lines(proc, "warning:")
    if case in FALLS_BACK:  # one line naming the file passed over
        assert len(warnings) == 1 and f"step_00000003/{FALLS_BACK[case]}" in warnings[0], proc.stderr
    if protected:
        assert _digest(protected) == before, "a folder the command was pointed at changed"
    assert not (tmp_path / "MARKER").exists(), "a crafted checkpoint or model folder ran code"
    for fresh in ("fresh", "next", "extended"):  # refused before any work: nothing written
        if code == 2:
            assert not (tmp_path / fresh).exists()


def test_the_crafted_file_does_run_code_when_unpickled(tmp_path):
    """The probes' crafted checkpoint is a real threat: DeepSpeed's own `weights_only=False` runs it."""
    path = tmp_path / "rng_rank0.pt"
    torch.save({"torch": _RunsCode(tmp_path / "MARKER")}, path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "MARKER").exists()


def test_a_damaged_newest_checkpoint_falls_back_and_resumes_exactly(setup, trained, tmp_path):
    """The newest checkpoint truncated: a one-line warning naming it, training resumes from the one
    before with the uninterrupted run's losses, rewrites the damaged step, and `latest` names the new one."""
    run = shutil.copytree(trained, tmp_path / "run")
    states = ckpt(run, 3) / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[: states.stat().st_size // 2])
    proc = _run(_train_argv(setup, run, "--resume", "max_steps=4", "checkpoint.every=1", "checkpoint.keep=2",
                            "eval.sets=[]"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = _lines(proc, "warning:")
    assert len(warnings) == 1 and str(states) in warnings[0] and "using step_00000002" in warnings[0]
    assert read_metrics(run)[3]["loss"] == read_metrics(trained)[3]["loss"]  # resumed from step 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # step 3, logged before and redone after the resume, appears once
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert kept == ["step_00000003", "step_00000004"]  # keep 2, by step number
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert torch.load(ckpt(run, 3) / "mp_rank_00_model_states.pt", weights_only=True, mmap=True)["step"] == 3


def test_pruning_keeps_the_checkpoint_just_written(setup, trained, tmp_path):
    """Resumed from an earlier checkpoint with keep=1: the one it writes stays and is latest; older ones
    go, by step number; the later one of the abandoned continuation is left until the run reaches it."""
    run = shutil.copytree(trained, tmp_path / "run")
    proc = _run(_train_argv(setup, run, "--resume", "1", "max_steps=2", "checkpoint.every=1", "checkpoint.keep=1",
                            "eval.sets=[]"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert kept == ["step_00000002", "step_00000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    proc = _run(_train_argv(setup, run, "--resume", "--dry-run"))
    assert proc.returncode == 0 and f"resuming from {ckpt(run, 2)}" in proc.stdout


def test_a_loss_or_gradient_norm_that_becomes_non_finite_stops_the_run_keeping_the_last_checkpoint(
    setup, tmp_path
):
    """An LR of 1e30 (finite, so the config takes it) blows the weights up at the first step: the second
    step's gradient norm is not finite. The run stops at once with one line (exit 1), saves nothing of
    the broken step, and `latest` still names the checkpoint before it."""
    out = tmp_path / "run"
    proc = _run(_train_argv(setup, out, "max_steps=6", "checkpoint.every=1", "checkpoint.keep=10", "eval.sets=[]",
                            "optim.lr=1e30", "schedule.min_lr=0", "schedule.warmup_ratio=0"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = _lines(proc, "error:")
    assert len(errors) == 1 and "became non-finite at step 2" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "done:" not in proc.stdout
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000001"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    records = read_metrics(out)
    assert sorted(records) == [1] and all(
        v is None or not isinstance(v, float) or math.isfinite(v) for v in records[1].values()
    )

    # nan_policy skip: DeepSpeed discards steps 2 and 3 (counted), the third in a row stops the run
    out = tmp_path / "skip"
    proc = _run(_train_argv(setup, out, "max_steps=6", "checkpoint.every=1", "checkpoint.keep=10", "eval.sets=[]",
                            "log.every=1", "optim.lr=1e30", "schedule.min_lr=0", "schedule.warmup_ratio=0",
                            "optim.nan_policy=skip", "optim.max_skips=2"))  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert [line.split(":")[1] for line in _lines(proc, "warning: step")] == [
        " step 2 skipped",
        " step 3 skipped",
    ]
    errors = _lines(proc, "error:")
    assert len(errors) == 1 and "non-finite in 3 steps in a row (optim.max_skips 2) at step 4" in errors[0]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert [read_metrics(out)[k].get("skipped_steps") for k in (1, 2, 3)] == [None, 1, 2]
    weights = [
        torch.load(ckpt(out, k) / "mp_rank_00_model_states.pt", weights_only=True, mmap=True)["module"]
        for k in (1, 3)
    ]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])  # skipped: untouched


def test_a_second_run_into_a_run_folder_in_use_is_refused_before_it_loads_the_model(setup, tmp_path):
    """One writer per run folder: while another process holds it (here the test itself, as a running
    trainer would), a run into it exits 2 naming the holder, and writes nothing there."""
    from cpt.io import output_lock

    out = tmp_path / "run"
    with output_lock(out, "trainer/main.py"):
        proc = _run(_train_argv(setup, out, "max_steps=2", "eval.sets=[]"))
    _one_line_error(proc, f"another command is writing it (trainer/main.py, pid {os.getpid()}")
    assert "Loading weights" not in proc.stderr and not out.exists()


def test_a_full_or_read_only_disk_is_one_line_and_leaves_no_half_checkpoint(setup, trained, small_disk):
    out = small_disk["full"] / "run"
    proc = _run(_train_argv(setup, out, "max_steps=2", "checkpoint.every=1", "eval.sets=[]"))
    _one_line_error(proc, "step_00000001: the checkpoint could not be written (No space left on device)")
    assert not list((out / "checkpoints").glob("*.tmp")) and not (out / "checkpoints" / "latest").exists()

    export = [
        sys.executable,
        "trainer/export.py",
        "--checkpoint",
        str(trained),
        "--output",
        str(out.parent / "hf"),
    ]
    _one_line_error(_run(export), "no space left on the device")

    proc = _run(_train_argv(setup, small_disk["ro"] / "run", "max_steps=2", "eval.sets=[]"))
    _one_line_error(proc, "cannot create its lock file .cpt.lock there (Read-only file system)")
    assert "Loading weights" not in proc.stderr  # refused before the model loads
