"""`cpt eval`: MMLU, CMMLU and C-Eval as CPT runs are reported, through lm-evaluation-harness, offline.

    cpt eval --model HF_DIR | RUN[:STEP] --tasks mmlu,cmmlu[,ceval] --data DIR [--shots 0|5] [--limit N]
             --output DIR

Each subject is lm-eval's own task of that name (`mmlu_astronomy`, `cmmlu_anatomy`,
`ceval-valid_accountant`: its YAML, so its prompt, few-shot examples from `dev` taken first-n, answer
letters and log-likelihood scoring), with the dataset replaced by the local CSV files: nothing is
downloaded. The local layouts are those the benchmarks publish:

    DIR/mmlu/{dev,val,test}/SUBJECT_{split}.csv   no header: question, A, B, C, D, answer letter
    DIR/cmmlu/{dev,test}/SUBJECT.csv              header ",Question,A,B,C,D,Answer"
    DIR/ceval/{dev,val}/SUBJECT_{split}.csv       header "id,question,A,B,C,D,answer[,explanation]"

MMLU is scored on `test` where it is there, else on `val`; CMMLU on `test`; C-Eval on `val` (its test
answers are not public). `--limit N` takes a seeded subset of N questions per subject (the same one
every time). OUTPUT gets lm-eval's results (`results.json`), every question's choice
(`samples.jsonl`) and a summary (`summary.json`, `summary.md`): accuracy with its standard error per
subject, per task and per language (English: MMLU; Chinese: CMMLU and C-Eval).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

LETTERS = ("A", "B", "C", "D")


class BenchError(ValueError):
    """Benchmark files that are missing or malformed; the message names the file (and the line)."""


@dataclass(frozen=True)
class Layout:
    """Where a benchmark's local CSV files are and how lm-eval names its tasks."""

    name: str
    lang: str
    yaml_dir: str  # under lm_eval/tasks
    task: str  # lm-eval's task name for a subject
    eval_splits: tuple[str, ...]  # the first one present is scored
    split_key: str  # the split name lm-eval's YAML scores ("test" / "val")
    file: str  # a subject's file in a split folder
    header: tuple[str, ...] | None  # None: no header row (MMLU)

    def path(self, root: Path, split: str, subject: str) -> Path:
        return root / self.name / split / self.file.format(subject=subject, split=split)


LAYOUTS = {
    "mmlu": Layout("mmlu", "en", "mmlu/default", "mmlu_{subject}", ("test", "val"), "test",
                   "{subject}_{split}.csv", None),
    "cmmlu": Layout("cmmlu", "zh", "cmmlu", "cmmlu_{subject}", ("test",), "test", "{subject}.csv",
                    ("", "Question", "A", "B", "C", "D", "Answer")),
    "ceval": Layout("ceval", "zh", "ceval", "ceval-valid_{subject}", ("val",), "val", "{subject}_{split}.csv",
                    ("id", "question", "A", "B", "C", "D", "answer")),
}  # fmt: skip


def _read_rows(path: Path, layout: Layout) -> list[dict]:
    """The questions of one CSV file as lm-eval's task for it reads them, or a BenchError naming the line."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BenchError(f"{path}: cannot be read as CSV ({e})") from None
    if layout.header is None:
        body, start = table, 1
    else:
        if not table or tuple(table[0][: len(layout.header)]) != layout.header:
            got = ",".join(table[0]) if table else "an empty file"
            raise BenchError(f"{path}: expected the header {','.join(layout.header)}, found {got}")
        names, body, start = table[0], table[1:], 2
    rows = []
    for n, fields in enumerate(body, start):
        if not any(f.strip() for f in fields):
            continue
        if layout.header is None:
            if len(fields) != 6:
                raise BenchError(
                    f"{path}:{n}: {len(fields)} fields, expected 6 (question, A, B, C, D, answer)"
                )
            question, *choices, answer = fields
            row = {"question": question, "choices": choices, "answer": answer.strip()}
            key = "answer"
        else:
            if len(fields) != len(names):
                raise BenchError(f"{path}:{n}: {len(fields)} fields, the header has {len(names)}")
            row = {k: v for k, v in zip(names, fields, strict=True) if k}
            key = layout.header[-1]
            row[key] = row[key].strip()
        if row[key] not in LETTERS:
            raise BenchError(f"{path}:{n}: answer {row[key]!r} is not one of A, B, C, D")
        if layout.header is None:
            row["answer"] = LETTERS.index(row["answer"])  # as cais/mmlu holds it (doc_to_target: answer)
        rows.append(row)
    if not rows:
        raise BenchError(f"{path}: no questions")
    return rows


@dataclass
class Subject:
    task: str  # mmlu, cmmlu, ceval
    name: str
    split: str
    questions: list[dict]
    dev: list[dict]
    indices: list[int]  # the questions' lines in the file (0-based), after --limit


def load_subjects(data: str | Path, task: str, shots: int, limit: int | None, seed: int = 0) -> list[Subject]:
    """Every subject of `task` under DATA, its questions (a seeded subset of `limit`) and dev examples."""
    layout, root = LAYOUTS[task], Path(data)
    folder = next((root / task / s for s in layout.eval_splits if (root / task / s).is_dir()), None)
    if folder is None:
        wanted = " or ".join(str(root / task / s) for s in layout.eval_splits)
        raise BenchError(f"{wanted}: no such folder (--data holds {task}/<split>/*.csv)")
    suffix = "" if "{split}" not in layout.file else f"_{folder.name}"
    files = sorted(folder.glob("*.csv"))
    if not files:
        raise BenchError(f"{folder}: no .csv files")
    subjects = []
    for path in files:
        name = path.stem.removesuffix(suffix)
        questions = _read_rows(path, layout)
        dev_path = layout.path(root, "dev", name)
        if shots and not dev_path.is_file():
            raise BenchError(f"{dev_path}: missing ({shots}-shot prompts take their examples from dev)")
        dev = _read_rows(dev_path, layout) if dev_path.is_file() else []
        if len(dev) < shots:
            raise BenchError(f"{dev_path}: {len(dev)} examples, fewer than --shots {shots}")
        indices = list(range(len(questions)))
        if limit is not None and limit < len(questions):
            indices = sorted(random.Random(f"{seed}:{task}:{name}").sample(indices, limit))
        subjects.append(Subject(task, name, folder.name, [questions[i] for i in indices], dev, indices))
    return subjects


def lm_eval_task(subject: Subject, shots: int):
    """lm-eval's own task for this subject (its YAML), reading the local rows instead of the Hub."""
    import datasets
    import lm_eval
    from lm_eval.api.task import ConfigurableTask

    _quiet_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    layout = LAYOUTS[subject.task]
    name = layout.task.format(subject=subject.name)
    yaml_path = Path(lm_eval.__file__).parent / "tasks" / layout.yaml_dir / f"{name}.yaml"
    if not yaml_path.is_file():
        raise BenchError(
            f"{layout.path(Path('.'), subject.split, subject.name)}: {subject.name!r} is not a subject of "
            f"lm-eval's {subject.task} (no task {name})"
        )
    config = load_yaml(yaml_path)
    for key in ("dataset_path", "dataset_name", "dataset_kwargs"):
        config.pop(key, None)
    splits = {layout.split_key: subject.questions, "dev": subject.dev or subject.questions[:0]}
    config["custom_dataset"] = lambda **_: {k: datasets.Dataset.from_list(v) for k, v in splits.items()}
    config["num_fewshot"] = shots
    config.pop("tag", None)  # the group tags of the full benchmark: not registered here
    return ConfigurableTask(config=config)


@dataclass
class Score:
    correct: int
    total: int

    @property
    def acc(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    @property
    def stderr(self) -> float:
        """Of the mean of 0/1 outcomes (n - 1 in the variance, as lm-eval's `mean_stderr`)."""
        if self.total < 2:
            return float("nan")
        p = self.acc
        return math.sqrt(p * (1 - p) / (self.total - 1))


@dataclass
class Summary:
    shots: int
    subjects: dict[str, dict] = field(default_factory=dict)  # "task/subject" -> acc, stderr, n
    tasks: dict[str, dict] = field(default_factory=dict)
    languages: dict[str, dict] = field(default_factory=dict)


def _score(scores: list[Score]) -> Score:
    return Score(sum(s.correct for s in scores), sum(s.total for s in scores))


def _figures(s: Score) -> dict:
    return {"acc": s.acc, "stderr": s.stderr, "n": s.total, "correct": s.correct}


def summarize(shots: int, scores: dict[str, Score]) -> Summary:
    """Accuracy per subject ("task/subject"), per task and per language, from each subject's counts."""
    summary = Summary(shots)
    by_task: dict[str, list[Score]] = {}
    by_lang: dict[str, list[Score]] = {}
    for key, score in scores.items():
        task = key.partition("/")[0]
        summary.subjects[key] = _figures(score)
        by_task.setdefault(task, []).append(score)
        by_lang.setdefault(LAYOUTS[task].lang, []).append(score)
    summary.tasks = {t: _figures(_score(v)) for t, v in by_task.items()}
    summary.languages = {lang: _figures(_score(v)) for lang, v in by_lang.items()}
    return summary


class _ExpectedWarnings:
    """Drops lm-eval's warnings about what cpt does on purpose, one per subject or call otherwise: a
    dataset from a function (the local CSV rows) and a model object instead of a Hub name."""

    EXPECTED = (
        "Custom kwargs can be passed to `--metadata`",
        "`pretrained` model kwarg is not of type `str`",
        "Passed an already-initialized model through `pretrained`",
        "Overwriting default num_fewshot",  # with the same number: the task config already holds --shots
    )

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not any(e in message for e in self.EXPECTED)


def _quiet_lm_eval() -> None:
    """lm-eval's INFO lines (one per subject task) and the warnings `_ExpectedWarnings` names, off: before
    the first task is built (cpt eval builds them all to check the files before loading the model)."""
    import logging

    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    for name in ("lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.evaluator"):
        if not any(isinstance(f, _ExpectedWarnings) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(_ExpectedWarnings())


@functools.cache
def _task_manager():
    """A task manager without lm-eval's own task index: the tasks are given as objects, and without one
    simple_evaluate indexes every task YAML lm-eval ships (some 14,000 files, ~14 s) at every call."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=False)


def evaluate(
    model,
    tokenizer,
    data: str | Path,
    tasks: list[str],
    shots: int = 5,
    limit: int | None = None,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "cpu",
    shard: tuple[int, int] = (0, 1),
) -> tuple[Summary, dict, list[dict]]:
    """Run the subjects of `tasks` on `model` (a Hugging Face model object or folder) with lm-eval.

    Returns the summary, lm-eval's results (per subject task) and one record per question: the subject,
    its line in the file, the log-likelihood of each letter, the choice (the largest) and the answer.
    `shard=(i, n)` scores only every n-th question of each subject from the i-th (training ranks share
    the work this way); the summary then counts those alone, every subject still listed."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()

    unknown = [t for t in tasks if t not in LAYOUTS]
    if unknown:
        raise BenchError(f"--tasks {unknown[0]}: not one of {', '.join(LAYOUTS)}")
    subjects = [s for t in tasks for s in load_subjects(data, t, shots, limit, seed)]
    index, count = shard
    if count > 1:
        subjects = [
            Subject(s.task, s.name, s.split, s.questions[index::count], s.dev, s.indices[index::count])
            for s in subjects
        ]
    scores = {f"{s.task}/{s.name}": Score(0, 0) for s in subjects}
    subjects = [s for s in subjects if s.questions]  # (a shard may hold none of a small subject)
    task_objects = {f"{s.task}/{s.name}": lm_eval_task(s, shots) for s in subjects}
    # HFLM leaves a model object where it is, whatever `device` says (a training rank's is there already)
    if not isinstance(model, str | Path) and next(model.parameters()).device != torch.device(device):
        model = model.to(device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)
    # a model object makes HFLM one process (each training rank runs its own share), but lm-eval only
    # returns results where LOCAL_RANK is 0 (its tensor-parallel convention): the call is made as that one
    local_rank = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    import lm_eval.evaluator as evaluator

    # simple_evaluate ends by recording the git hash of the working folder (git prints `fatal: not a git
    # repository` outside one) and torch's environment report (a dozen subprocesses, seconds at every
    # evaluation in training) into results that cpt does not keep: both are left out, for this call only
    recorders = evaluator.get_git_commit_hash, evaluator.add_env_info
    evaluator.get_git_commit_hash, evaluator.add_env_info = (lambda: None), (lambda storage: None)
    try:
        out = {"samples": {}}
        if task_objects:  # (a shard of tiny subjects may hold no question at all)
            out = simple_evaluate(
                model=lm,
                tasks=list(task_objects.values()),
                task_manager=_task_manager(),
                num_fewshot=shots,
                log_samples=True,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        evaluator.get_git_commit_hash, evaluator.add_env_info = recorders
        if local_rank is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = local_rank
    records = []
    for s in subjects:
        name = task_objects[f"{s.task}/{s.name}"].config.task
        correct = 0
        for sample in sorted(out["samples"][name], key=lambda x: x["doc_id"]):
            logliks = [float(r[0]) for r in sample["filtered_resps"]]
            choice = max(range(len(logliks)), key=lambda i: logliks[i])
            target = int(sample["target"])
            correct += choice == target
            records.append({"task": s.task, "subject": s.name, "split": s.split,
                            "line": s.indices[sample["doc_id"]], "logliks": logliks,
                            "choice": LETTERS[choice], "answer": LETTERS[target]})  # fmt: skip
        scores[f"{s.task}/{s.name}"] = Score(correct, len(s.questions))
    summary = summarize(shots, scores)
    results = {k: out[k] for k in ("results", "configs", "versions", "n-shot") if k in out}
    return summary, results, records


# The fixed prompts whose greedy continuations `cpt eval` records: the same ones for every model, so the
# report can set a base and its continued stages side by side ("can it still continue English text, and
# can it now continue Chinese?"). English first, then Chinese.
PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, there was a little girl who",
    "中国的首都是",
    "今天天气很好，我们一起去",
    "长江是中国最长的河流，它",
)


def continuations(model, tokenizer, prompts, max_new_tokens: int = 32, device: str = "cpu") -> list[dict]:
    """Each prompt's greedy continuation (no sampling: the same model gives the same text), decoded
    without special tokens. The prompts go one at a time, so no padding changes what a prompt sees."""
    import torch

    model = model.to(device)
    was_training = model.training
    model.eval()
    out = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
            with torch.no_grad():
                generated = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                )
            text = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
            out.append({"prompt": prompt, "continuation": text})
    finally:
        model.train(was_training)
    return out


def read_prompts(path: str | Path) -> list[str]:
    """`--prompts FILE`: one prompt a line (UTF-8), blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise BenchError(f"{path}: no prompts (one a line)")
    return prompts


@contextmanager
def kept_rng():
    """Python's, NumPy's and torch's random states as they were: lm-eval seeds them all, and a run that
    evaluates must train as one that does not."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def check(cfg) -> None:
    """The files of a trainer config's `eval.benchmarks`, read and checked before training starts."""
    for task in cfg.tasks:
        for s in load_subjects(cfg.data, task, cfg.shots, cfg.limit, cfg.seed):
            lm_eval_task(s, cfg.shots)


def in_training(model, tokenizer, cfg, device, shard: tuple[int, int] = (0, 1)) -> dict:
    """`bench/<task>/acc` (and its stderr) and `bench/<lang>/acc` of the live model, its mode and every
    random state left as they were.

    With `shard=(rank, world)` each rank scores every world-th question of each subject and one
    all-reduce sums the counts, so the figures are those of all the questions. Under ZeRO-3 the trainer
    passes (0, 1) instead: every forward pass gathers parameters from all ranks, so every rank must run
    the same ones, and each evaluates all the questions."""
    was_training = model.training
    with kept_rng():
        try:
            summary, _, _ = evaluate(model, tokenizer, cfg.data, cfg.tasks, cfg.shots, cfg.limit, cfg.seed,
                                     cfg.batch_size, str(device), shard)  # fmt: skip
        finally:
            model.train(was_training)
    if shard[1] > 1:
        import torch

        keys = list(summary.subjects)  # the same order on every rank: the files' sorted order
        counts = [float(summary.subjects[k][f]) for k in keys for f in ("correct", "n")]
        sums = torch.tensor(counts, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        totals = sums.tolist()
        scores = {k: Score(int(totals[2 * i]), int(totals[2 * i + 1])) for i, k in enumerate(keys)}
        summary = summarize(summary.shots, scores)
    out = {}
    for name, figures in {**summary.tasks, **summary.languages}.items():
        out[f"bench/{name}/acc"] = figures["acc"]
        out[f"bench/{name}/stderr"] = figures["stderr"]
    return out


def continuation_lines(samples: list[dict]) -> str:
    """The continuations as Markdown: each prompt in bold, then what the model wrote after it."""
    return "\n".join(f"- **{c['prompt']}**{c['continuation']}".replace("\n", " ") for c in samples)


def table(summary: Summary) -> str:
    """A Markdown table: every subject, then each task and each language (all questions pooled)."""
    lines = [f"{summary.shots}-shot | acc | ± stderr | questions", " | ".join(["---"] * 4)]

    def row(name: str, f: dict) -> str:
        return f"{name} | {f['acc']:.4f} | {f['stderr']:.4f} | {f['n']}"

    lines += [row(k, v) for k, v in summary.subjects.items()]
    lines += [row(f"**{k}**", v) for k, v in summary.tasks.items()]
    lines += [row(f"**{k}** (language)", v) for k, v in summary.languages.items()]
    return "\n".join(f"| {line} |" for line in lines)


def _json_default(value):
    return repr(value)  # lm-eval's configs hold functions (our dataset loader): named, not serialised


MARKER = "summary.json"
# what `cpt eval` writes: an --output holding anything else (a summary.json of another tool beside the
# user's files) is refused, not replaced
EVAL_FOLDER_FILES = ("results.json", "samples.jsonl", "summary.md", MARKER)


def _eval_folder():
    from cpt.io import holds_only

    return holds_only(*EVAL_FOLDER_FILES)


def write(
    output: str | Path, summary: Summary, results: dict, records: list[dict], about: dict, samples: list[dict]
) -> None:
    from dataclasses import asdict

    from cpt.io import written_dir

    with written_dir(output, _eval_folder(), "cpt eval") as tmp:
        (tmp / "results.json").write_text(
            json.dumps(results, indent=2, ensure_ascii=False, default=_json_default)
        )
        with (tmp / "samples.jsonl").open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        text = table(summary) + "\n"
        if samples:
            text += "\nGreedy continuations:\n\n" + continuation_lines(samples) + "\n"
        (tmp / "summary.md").write_text(text, encoding="utf-8")
        (tmp / MARKER).write_text(
            json.dumps({**about, **asdict(summary), "continuations": samples}, indent=2, ensure_ascii=False)
            + "\n"
        )


def load_model(spec: str):
    """(model, tokenizer, what) for `--model`: a Hugging Face folder, or a run folder with `:STEP` (the
    latest checkpoint that loads without it), LoRA merged."""
    from transformers import AutoModelForCausalLM

    from cpt.io import refuse_custom_code

    path, _, tag = spec.partition(":")
    folder = Path(path)
    if (folder / "checkpoints").is_dir():
        from trainer.run_folder import trained_model

        model, base, tag = trained_model(folder, tag or None)  # refuses a base naming custom code
        return model, _tokenizer(base), f"{folder}:{tag}"
    if not (folder / "config.json").is_file():
        raise BenchError(
            f"{spec}: neither a Hugging Face model folder (config.json) nor a run (checkpoints/)"
        )
    refuse_custom_code(folder)  # before transformers reads it (it would ask whether to run the code)
    return (
        AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False),
        _tokenizer(folder),
        str(folder),
    )


def _tokenizer(folder):
    """The folder's tokenizer. Llama 3's tokenizer_config asks for clean_up_tokenization_spaces, a clean-up
    for WordPiece that transformers ignores for BPE, warning at the first decode: it is switched off."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    backend = getattr(tok, "backend_tokenizer", None)
    if (
        getattr(tok, "clean_up_tokenization_spaces", False)
        and type(getattr(backend, "model", None)).__name__ == "BPE"
    ):
        tok.clean_up_tokenization_spaces = False
    return tok


def add_arguments(p) -> None:
    p.add_argument(
        "--model", required=True, help="a Hugging Face model folder, or RUN[:STEP] (a trainer run)"
    )
    p.add_argument(
        "--tasks", default="mmlu,cmmlu", help="comma-separated: mmlu, cmmlu, ceval (default mmlu,cmmlu)"
    )
    p.add_argument(
        "--data", required=True, help="folder holding mmlu/, cmmlu/, ceval/ in their published layouts"
    )
    p.add_argument(
        "--shots", type=int, choices=[0, 5], default=5, help="few-shot examples from dev (default 5)"
    )
    p.add_argument("--limit", type=int, help="a seeded subset of N questions per subject (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the subset's seed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    p.add_argument(
        "--prompts",
        help="a UTF-8 file, one prompt a line, whose greedy continuations are recorded "
        "(default: six fixed English and Chinese prompts)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=32,
        help="tokens of each greedy continuation (default 32; 0: no continuations)",
    )
    p.add_argument(
        "--output", required=True, help="folder for results.json, samples.jsonl, summary.{json,md}"
    )


def run(args) -> int:
    import sys
    import time

    import torch

    from cpt.io import (
        CustomCodeError,
        JsonFileError,
        OutputError,
        check_replaceable,
        exit_on_disk_fault,
        output_lock,
    )

    held = contextlib.ExitStack()
    try:
        held.enter_context(output_lock(args.output, "cpt eval"))  # one writer per output
        if args.limit is not None and args.limit < 1:
            raise BenchError(f"--limit {args.limit}: must be at least 1")
        if args.max_new_tokens < 0:
            raise BenchError(f"--max-new-tokens {args.max_new_tokens}: must be 0 or more")
        prompts = read_prompts(args.prompts) if args.prompts else list(PROMPTS)
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        check_replaceable(args.output, _eval_folder(), "cpt eval")
        for t in tasks:  # the files first: a bad one is said before a model is loaded
            if t not in LAYOUTS:
                raise BenchError(f"--tasks {t}: not one of {', '.join(LAYOUTS)}")
            for s in load_subjects(args.data, t, args.shots, args.limit, args.seed):
                lm_eval_task(s, args.shots)
        model, tokenizer, what = load_model(args.model)
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        start = time.perf_counter()
        summary, results, records = evaluate(model, tokenizer, args.data, tasks, args.shots, args.limit,
                                             args.seed, args.batch_size, device)  # fmt: skip
        seconds = time.perf_counter() - start
        samples = (
            continuations(model, tokenizer, prompts, args.max_new_tokens, device)
            if args.max_new_tokens
            else []
        )
        about = {"model": what, "tasks": tasks, "data": str(args.data), "limit": args.limit, "seed": args.seed,
                 "seconds": round(seconds, 1), "questions": len(records)}  # fmt: skip
        write(args.output, summary, results, records, about, samples)
    except (BenchError, OutputError, CustomCodeError, JsonFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output's disk full or read-only: one line, not a traceback
        return exit_on_disk_fault(e)
    finally:
        held.close()
    print(table(summary))
    if samples:
        print("\ngreedy continuations:\n" + continuation_lines(samples))
    print(f"{len(records):,} questions in {seconds:.1f} s; wrote {args.output}")
    return 0
