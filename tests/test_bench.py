"""`cpt eval`: lm-eval's MMLU, CMMLU and C-Eval tasks on local files, against a direct computation.

The direct computation uses transformers alone: the prompt each task's YAML describes (written out
here), then the log-likelihood of each answer letter after it; the letter with the largest is the
choice. `cpt eval` must pick the same letter for every question, so its accuracy is the same."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, data_path, llama3_tokenizer

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs

DESCRIPTIONS = {  # as lm-eval's task YAMLs write them
    (
        "mmlu",
        "global_facts",
    ): "The following are multiple choice questions (with answers) about global facts.\n\n",
    ("mmlu", "astronomy"): "The following are multiple choice questions (with answers) about astronomy.\n\n",
    ("cmmlu", "anatomy"): "以下是关于解剖学的单项选择题，请直接给出正确答案的选项。\n\n",
    ("ceval", "computer_network"): "以下是中国关于计算机网络的单项选择题，请选出其中的正确答案。\n\n",
}
ANSWER = {"mmlu": "Answer:", "cmmlu": "答案：", "ceval": "答案："}


def cpt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from cpt.demo.tiny_model import make_tiny_llama

    tokenizer = llama3_tokenizer()
    return make_tiny_llama(tokenizer, tmp_path_factory.mktemp("m") / "model", hidden=32, layers=2, heads=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Two MMLU subjects and one CMMLU-layout subject from tests/data, and a C-Eval folder in C-Eval's own
    layout (id,question,A,B,C,D,answer,explanation) made from CMMLU questions."""
    root = tmp_path_factory.mktemp("bench")
    mmlu, cmmlu = data_path("benchmarks", "mmlu"), data_path("benchmarks", "cmmlu")
    for split in ("dev", "val"):
        (root / "mmlu" / split).mkdir(parents=True)
        for subject in ("global_facts", "astronomy"):
            name = f"{subject}_{split}.csv"
            (root / "mmlu" / split / name).write_bytes((mmlu / split / name).read_bytes())
    for split in ("dev", "test"):
        (root / "cmmlu" / split).mkdir(parents=True)
        (root / "cmmlu" / split / "anatomy.csv").write_bytes((cmmlu / split / "anatomy.csv").read_bytes())
    for split, source in (("dev", "dev"), ("val", "test")):
        with (cmmlu / source / "computer_security.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))[:12]
        (root / "ceval" / split).mkdir(parents=True)
        with (root / "ceval" / split / f"computer_network_{split}.csv").open(
            "w", encoding="utf-8", newline=""
        ) as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
            for i, r in enumerate(rows):
                w.writerow([i, r["Question"], r["A"], r["B"], r["C"], r["D"], r["Answer"], ""])
    return root


def _questions(path: Path, task: str) -> list[tuple[str, list[str], str]]:
    with path.open(encoding="utf-8", newline="") as f:
        table = list(csv.reader(f))
    if task == "mmlu":
        return [(r[0], r[1:5], r[5]) for r in table]
    head = table[0]
    q, a = (head.index("Question"), head.index("Answer")) if task == "cmmlu" else (1, 6)
    return [(r[q], r[q + 1 : q + 5], r[a]) for r in table[1:]]


def _files(data: Path, task: str, subject: str) -> tuple[Path, Path]:
    split = {"mmlu": "val", "cmmlu": "test", "ceval": "val"}[task]
    name = (lambda s: f"{subject}_{s}.csv") if task != "cmmlu" else (lambda s: f"{subject}.csv")
    return data / task / "dev" / name("dev"), data / task / split / name(split)


def prompt(task: str, subject: str, question, shots: list) -> str:
    """The context lm-eval builds: description, then each example with its answer, then the question."""

    def text(q, choices):
        return (
            f"{q.strip()}\nA. {choices[0]}\nB. {choices[1]}\nC. {choices[2]}\nD. {choices[3]}\n{ANSWER[task]}"
        )

    examples = [f"{text(q, c)} {a}" for q, c, a in shots]
    return DESCRIPTIONS[(task, subject)] + "".join(e + "\n\n" for e in examples) + text(*question[:2])


def direct_choices(model_dir: Path, contexts: list[str]) -> list[list[float]]:
    """Log-likelihood of " A" ... " D" after each context, with transformers alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for context in contexts:
        context_ids = tok(context)["input_ids"]
        scores = []
        for letter in "ABCD":
            whole = tok(context + " " + letter)["input_ids"]
            target = whole[len(context_ids) :]
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)[len(context_ids) - 1 :]
            scores.append(float(sum(logprobs[i, t] for i, t in enumerate(target))))
        out.append(scores)
    return out


@pytest.mark.parametrize("shots", [0, 5])
def test_prompts_are_lm_evals_format_for_each_layout(data, shots):
    from trainer.evaluation.benchmarks import lm_eval_task, load_subjects

    for task, subject in (("mmlu", "global_facts"), ("cmmlu", "anatomy"), ("ceval", "computer_network")):
        [loaded] = [s for s in load_subjects(data, task, shots, None) if s.name == subject]
        lm_task = lm_eval_task(loaded, shots)
        lm_task.build_all_requests(limit=None, rank=0, world_size=1)
        dev, scored = _files(data, task, subject)
        examples, questions = _questions(dev, task)[:shots], _questions(scored, task)
        by_doc = {}
        for inst in lm_task.instances:
            by_doc.setdefault(inst.doc_id, []).append(inst.args)
        assert len(by_doc) == len(questions)
        for doc_id, args in by_doc.items():
            expected = prompt(task, subject, questions[doc_id], examples)
            assert [a[0] for a in args] == [expected] * 4
            assert [a[1] for a in args] == [" A", " B", " C", " D"]


def test_cpt_eval_picks_what_a_direct_computation_picks_on_every_question(model, data, tmp_path):
    proc = cpt("eval", "--model", str(model), "--tasks", "mmlu,cmmlu,ceval", "--data", str(data),
               "--shots", "5", "--limit", "8", "--output", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {(r["task"], r["subject"]) for r in records} == {
        ("mmlu", "global_facts"), ("mmlu", "astronomy"), ("cmmlu", "anatomy"), ("ceval", "computer_network")
    }  # fmt: skip
    for (task, subject), _ in DESCRIPTIONS.items():
        dev, scored = _files(data, task, subject)
        examples, questions = _questions(dev, task)[:5], _questions(scored, task)
        mine = [r for r in records if (r["task"], r["subject"]) == (task, subject)]
        assert len(mine) == min(8, len(questions))
        direct = direct_choices(model, [prompt(task, subject, questions[r["line"]], examples) for r in mine])
        for r, scores in zip(mine, direct, strict=True):
            assert r["answer"] == questions[r["line"]][2]
            assert r["logliks"] == pytest.approx(scores, abs=2e-3)
            assert r["choice"] == "ABCD"[max(range(4), key=lambda i: scores[i])]
        correct = sum(r["choice"] == r["answer"] for r in mine)
        assert summary["subjects"][f"{task}/{subject}"]["acc"] == pytest.approx(correct / len(mine))
    assert summary["languages"]["en"]["n"] == sum(r["task"] == "mmlu" for r in records)
    assert "| **zh** (language) |" in (tmp_path / "out" / "summary.md").read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "mmlu_astronomy" in results["results"] and "acc,none" in results["results"]["mmlu_astronomy"]


def greedy(model_dir: Path, prompt: str, new_tokens: int) -> str:
    """The argmax token appended `new_tokens` times, with transformers' forward alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = tok(prompt)["input_ids"]
    start = len(ids)
    for _ in range(new_tokens):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return tok.decode(ids[start:], skip_special_tokens=True)


def test_greedy_continuations_of_the_fixed_prompts_and_of_a_prompts_file(model, data, tmp_path):
    from trainer.evaluation.benchmarks import PROMPTS

    proc = cpt("eval", "--model", str(model), "--tasks", "cmmlu", "--data", str(data), "--shots", "0",
               "--limit", "2", "--max-new-tokens", "6", "--output", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = json.loads((tmp_path / "out" / "summary.json").read_text())["continuations"]
    assert [c["prompt"] for c in samples] == list(PROMPTS)
    assert any(c["continuation"] for c in samples)
    for c in samples[:: len(samples) - 1]:  # an English and a Chinese prompt
        assert c["continuation"] == greedy(model, c["prompt"], 6)
    assert f"**{PROMPTS[0]}**" in (tmp_path / "out" / "summary.md").read_text()

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("北京是\n\nThe sun\n", encoding="utf-8")
    proc = cpt("eval", "--model", str(model), "--tasks", "cmmlu", "--data", str(data), "--shots", "0",
               "--limit", "2", "--prompts", str(prompts), "--output", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = json.loads((tmp_path / "out" / "summary.json").read_text())["continuations"]
    assert [c["prompt"] for c in samples] == ["北京是", "The sun"]
    proc = cpt("eval", "--model", str(model), "--tasks", "cmmlu", "--data", str(data), "--shots", "0",
               "--limit", "2", "--max-new-tokens", "0", "--output", str(tmp_path / "out"))  # fmt: skip
    assert (
        proc.returncode == 0
        and json.loads((tmp_path / "out" / "summary.json").read_text())["continuations"] == []
    )


def test_an_output_holding_other_files_is_refused_not_replaced(model, data, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "summary.json").write_text("{}")  # another tool's summary, beside the user's work
    (theirs / "notes.txt").write_text("mine")
    proc = cpt("eval", "--model", str(model), "--tasks", "mmlu", "--data", str(data), "--shots", "0",
               "--limit", "1", "--max-new-tokens", "0", "--output", str(theirs))  # fmt: skip
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert str(theirs) in proc.stderr and (theirs / "notes.txt").read_text() == "mine"
    # an earlier cpt eval output is replaced
    out = tmp_path / "out"
    for _ in range(2):
        proc = cpt("eval", "--model", str(model), "--tasks", "mmlu", "--data", str(data), "--shots", "0",
                   "--limit", "1", "--max-new-tokens", "0", "--output", str(out))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "results.json",
        "samples.jsonl",
        "summary.json",
        "summary.md",
    ]


def test_the_limit_subset_is_seeded_and_the_same_every_time(data):
    from trainer.evaluation.benchmarks import load_subjects

    first = [s.indices for s in load_subjects(data, "cmmlu", 5, 10, seed=3)]
    assert first == [s.indices for s in load_subjects(data, "cmmlu", 5, 10, seed=3)]
    assert first != [s.indices for s in load_subjects(data, "cmmlu", 5, 10, seed=4)]
    assert all(len(i) == 10 and i == sorted(i) for i in first)


def test_missing_or_broken_benchmark_files_give_one_line(data, model, tmp_path):
    import shutil

    def fails(root: Path, *extra: str) -> str:
        proc = cpt(
            "eval", "--model", str(model), "--data", str(root), "--output", str(tmp_path / "o"), *extra
        )
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
        assert not (tmp_path / "o").exists()
        return proc.stderr

    assert "cmmlu/test" in fails(tmp_path / "nothing", "--tasks", "cmmlu")
    broken = tmp_path / "broken"
    shutil.copytree(data, broken)
    bad = broken / "mmlu" / "val" / "astronomy_val.csv"
    bad.write_text(bad.read_text(encoding="utf-8").replace(",D\n", ",E\n", 1), encoding="utf-8")
    assert f"{bad}:" in fails(broken, "--tasks", "mmlu") and "'E'" in fails(broken, "--tasks", "mmlu")
    bad.write_text("just one field\n", encoding="utf-8")
    assert "1 fields, expected 6" in fails(broken, "--tasks", "mmlu")
    head = broken / "cmmlu" / "test" / "anatomy.csv"
    head.write_text("question,a,b\n", encoding="utf-8")
    assert "expected the header" in fails(broken, "--tasks", "cmmlu")
    (broken / "ceval" / "dev" / "computer_network_dev.csv").unlink()
    assert "5-shot" in fails(broken, "--tasks", "ceval")
    assert "not one of" in fails(data, "--tasks", "gsm8k")


def test_a_trainer_run_is_evaluated_at_a_checkpoint_by_step(data, tmp_path):
    from trainer_setup import build_small_setup, run_train

    setup = build_small_setup(tmp_path)
    run_train(setup, tmp_path / "run", "--set", "max_steps=4", "--set", "eval.every=0", ranks=1)
    proc = cpt("eval", "--model", f"{tmp_path / 'run'}:4", "--tasks", "mmlu", "--data", str(data), "--shots",
               "0", "--limit", "3", "--output", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"].endswith("step_00000004") and summary["tasks"] == {
        "mmlu": summary["tasks"]["mmlu"]
    }
    assert summary["tasks"]["mmlu"]["n"] == 6 and summary["shots"] == 0


def test_benchmarks_in_training_are_logged_and_leave_the_trajectory_as_it_was(data, tmp_path):
    from cpt.report.collect import read_metrics
    from trainer_setup import build_small_setup, run_train

    setup = build_small_setup(tmp_path)
    plain = tmp_path / "plain"
    run_train(setup, plain)
    bench = ["--set", f"eval.benchmarks={{tasks: [mmlu, cmmlu], data: {data}, limit: 2, shots: 0}}"]
    run_train(setup, tmp_path / "bench", *bench)
    without, with_bench = read_metrics(plain), read_metrics(tmp_path / "bench")
    steps = sorted(s for s in with_bench if "loss" in with_bench[s])
    assert steps == sorted(s for s in without if "loss" in without[s]) and len(steps) == 16
    for s in steps:  # the same losses, learning rates and gradient norms at every step: RNG states kept
        assert {k: with_bench[s][k] for k in ("loss", "lr", "grad_norm")} == {
            k: without[s][k] for k in ("loss", "lr", "grad_norm")
        }
    logged = sorted(s for s, m in with_bench.items() if "bench/mmlu/acc" in m)
    assert logged == [0, 8, 16]  # the start, every eval.every steps, the end
    for s in logged:
        m = with_bench[s]
        assert 0 <= m["bench/mmlu/acc"] <= 1 and 0 <= m["bench/cmmlu/acc"] <= 1
        assert {"bench/en/acc", "bench/zh/acc", "eval/en_old/ppl"} <= set(m)
    # the two ranks shared the questions (one of each subject's two each) and summed their counts: at step 0
    # (the base's weights) the figures are those cpt eval gives the base on all the questions
    proc = cpt("eval", "--model", str(setup["model"]), "--tasks", "mmlu,cmmlu", "--data", str(data), "--shots",
               "0", "--limit", "2", "--max-new-tokens", "0", "--output", str(tmp_path / "base_eval"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((tmp_path / "base_eval" / "summary.json").read_text())
    for name, figures in {**base["tasks"], **base["languages"]}.items():
        assert with_bench[0][f"bench/{name}/acc"] == pytest.approx(figures["acc"])
        assert with_bench[0][f"bench/{name}/stderr"] == pytest.approx(figures["stderr"])
    proc = subprocess.run(
        [sys.executable, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
         "--output", str(tmp_path / "bad"), "--set", f"eval.benchmarks={{tasks: [ceval], data: {tmp_path}, shots: 5}}",
         "--dry-run"], cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert (
        proc.returncode == 2 and "eval.benchmarks" in proc.stderr and str(tmp_path / "ceval") in proc.stderr
    )
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_kept_rng_restores_what_lm_eval_seeds():
    import random

    import numpy as np
    import torch

    from trainer.evaluation.benchmarks import kept_rng

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    with kept_rng():
        random.seed(0), np.random.seed(0), torch.manual_seed(0)  # what simple_evaluate does
        random.random(), np.random.rand(), torch.rand(1)
    after = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert after == (random.random(), float(np.random.rand()), float(torch.rand(1)))
