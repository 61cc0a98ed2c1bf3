"""`cpt eval` speed: seconds per 1,000 questions, few-shot, of a tiny and a ~100M-parameter Llama on CPU.

    python benchmarks/bench_eval.py [--sizes tiny,100m] [--tasks mmlu,cmmlu] [--shots 5] [--limit N]
                                    [--batch-size 8] [--repeats 1] [--device cpu] [--json out.json]

Both models are random Llamas over the real LLaMA SentencePiece tokenizer (`shared/data/tokenizers/
llama-32k.model`, 32,000 pieces), made a Hugging Face tokenizer folder by `cpt-tok merge` of it with
itself (nothing added). "tiny": hidden 64, 2 layers, 4/2 heads (4.2M parameters, nearly all of them
embeddings); "100m": the shape of `bench_trainer.py --size 100m` (GPT-2-small's width and depth in
Llama's form, 124.7M parameters). Questions are the local MMLU and CMMLU files of `shared/data/
benchmarks` (8 subjects a task), scored by `trainer.evaluation.benchmarks.evaluate` (lm-evaluation-harness, the call
`cpt eval` makes), fp32, one call per task.

A call costs a fixed part (whatever the number of questions) and a part per question, so each task is
called twice, with `--limit 1` and with `--limit N` questions per subject (default: 5 for tiny, 3 for
100m, so that the whole run takes under 10 minutes on 2 cores): the difference gives the seconds per
question ("per 1,000 questions"), the rest of the small call the fixed part; "one call of 1,000" is
the two together. The raw figure of the larger call (its seconds over its questions) is printed too.
Before anything is timed, one warm-up call per size (one question of one subject): the first also
imports lm-eval, and that import + first call is reported on its own, as is the time lm-eval's
`TaskManager()` takes to build its index of every task YAML it ships (what `simple_evaluate` builds
in every call unless given one: `evaluate` gives it one without that index).
"Forward" is the time inside the model's forward (forward hooks); tokens are those the forward passes
saw per question ("padded" adds the right padding of each batch). Each question is one forward row:
its four answer letters share the prompt and lm-eval scores them from one set of logits. Of
`--repeats`, the repeat whose two calls of a task took least together is kept; every seed is fixed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
BENCHMARKS = DATA / "benchmarks"
LLAMA_32K = DATA / "tokenizers" / "llama-32k.model"

SHAPES = {
    # make_tiny_llama's default shape (cpt/demo/tiny_model.py)
    "tiny": dict(hidden_size=64, intermediate_size=168, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    # bench_trainer.py's "100m": GPT-2-small's width and depth in Llama's form (GQA, SwiGLU, untied)
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4),
}  # fmt: skip
LIMITS = {"tiny": 5, "100m": 3}  # questions per subject of the big call: under 10 minutes on 2 cores


def make_tokenizer(folder: Path) -> Path:
    """LLaMA's 32k SentencePiece model as a Hugging Face tokenizer folder (merged with itself)."""
    from cpt.tok.merge import merge

    result = merge(LLAMA_32K, LLAMA_32K, folder)
    assert result.added == 0 and result.total == 32000, result
    return folder


def make_model(folder: Path, tokenizer: Path, shape: dict, seed: int) -> Path:
    """A random Llama of `shape` over the tokenizer's vocabulary, its files beside it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = LlamaConfig(
        **shape,
        vocab_size=-(-len(tok) // 64) * 64,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    for path in tokenizer.iterdir():
        shutil.copy2(path, folder / path.name)
    return folder


class ForwardMeter:
    """Forward passes of a model: how many, their real and padded tokens, their longest row, their time."""

    def __init__(self, model):
        self.calls = self.tokens = self.padded = self.longest = 0
        self.seconds = 0.0
        self._start = 0.0
        self._hooks = [
            model.register_forward_pre_hook(self._before, with_kwargs=True),
            model.register_forward_hook(self._after, with_kwargs=True),
        ]

    def _before(self, module, args, kwargs):
        ids = args[0] if args else kwargs.get("input_ids")
        if ids is not None:
            self.calls += 1
            self.padded += ids.numel()
            self.tokens += int((ids != 0).sum())  # lm-eval pads with 0 (LLaMA's <unk>, not in any prompt)
            self.longest = max(self.longest, ids.shape[-1])
        self._start = time.perf_counter()

    def _after(self, module, args, kwargs, output):
        self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.calls = self.tokens = self.padded = self.longest = 0
        self.seconds = 0.0

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def timed_eval(model, tok, meter: ForwardMeter, data: Path, task: str, args, limit: int) -> dict:
    from trainer.evaluation.benchmarks import evaluate

    seed_everything(args.seed)
    meter.reset()
    start = time.perf_counter()
    summary, _, records = evaluate(model, tok, data, [task], shots=args.shots, limit=limit, seed=args.seed,
                                   batch_size=args.batch_size, device=args.device)  # fmt: skip
    return {
        "seconds": time.perf_counter() - start,
        "questions": len(records),
        "acc": summary.tasks[task]["acc"],
        "forward_calls": meter.calls,
        "forward_seconds": meter.seconds,
        "tokens": meter.tokens,
        "padded_tokens": meter.padded,
        "longest": meter.longest,
    }


def one_subject(root: Path, task: str) -> Path:
    """A copy of the first subject of `task` alone (its dev and scored files): the warm-up's data."""
    for split in ("dev", "val", "test"):
        files = sorted((BENCHMARKS / task / split).glob("*.csv"))
        if files:
            (root / task / split).mkdir(parents=True)
            shutil.copy2(files[0], root / task / split / files[0].name)
    return root


def fit(small: dict, big: dict) -> dict:
    """Seconds per question and the fixed seconds of a call, from a small and a big call of one task."""
    dq = big["questions"] - small["questions"]
    per_q = (big["seconds"] - small["seconds"]) / dq
    forward_per_q = (big["forward_seconds"] - small["forward_seconds"]) / dq
    return {
        "seconds_per_1000": 1000 * per_q,
        "forward_per_1000": 1000 * forward_per_q,
        "fixed_seconds": small["seconds"] - per_q * small["questions"],
        "measured_per_1000": 1000 * big["seconds"] / big["questions"],
        "small_questions": small["questions"],
        "questions": big["questions"],
        "tokens_per_question": big["tokens"] / big["questions"],
        "padded_per_question": big["padded_tokens"] / big["questions"],
        "longest": big["longest"],
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return platform.processor() or platform.machine()


def _load(averages) -> str:
    return " ".join(f"{a:.2f}" for a in averages)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="tiny,100m", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--tasks", default="mmlu,cmmlu", help="comma-separated: mmlu, cmmlu")
    parser.add_argument("--shots", type=int, choices=[0, 5], default=5)
    parser.add_argument("--limit", type=int, help="questions per subject of the big call, 2 or more "
                        f"(default: {', '.join(f'{v} for {k}' for k, v in LIMITS.items())})")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="timed pairs of calls of each size and task (the quickest pair kept)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if bad := [s for s in sizes if s not in SHAPES]:
        parser.error(f"--sizes {bad[0]}: not one of {', '.join(SHAPES)}")
    if bad := [t for t in tasks if t not in ("mmlu", "cmmlu")]:
        parser.error(f"--tasks {bad[0]}: not one of mmlu, cmmlu")
    if (args.limit is not None and args.limit < 2) or args.repeats < 1:
        parser.error("--limit must be at least 2 and --repeats at least 1")
    if not BENCHMARKS.is_dir() or not LLAMA_32K.is_file():
        print(f"error: the shared data is not there ({BENCHMARKS}, {LLAMA_32K})", file=sys.stderr)
        return 2

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    machine = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU (no GPU used)",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg(),
    }
    print(f"{machine['cpu']} x {machine['cores']} ({machine['torch_threads']} torch threads), "
          f"{machine['device']}, load {_load(machine['load_before'])}; {machine['date']}", flush=True)  # fmt: skip
    results: dict = {"args": vars(args), **machine, "sizes": {}}
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        tok_dir = make_tokenizer(Path(tmp) / "tokenizer")
        tok = AutoTokenizer.from_pretrained(tok_dir)
        warm_data = one_subject(Path(tmp) / "warm", tasks[0])
        for size in sizes:
            limit = args.limit or LIMITS[size]
            folder = make_model(Path(tmp) / size, tok_dir, SHAPES[size], args.seed)
            model = AutoModelForCausalLM.from_pretrained(folder).to(args.device).eval()
            parameters = sum(p.numel() for p in model.parameters())
            meter = ForwardMeter(model)
            first = not results["sizes"]
            start = time.perf_counter()
            if first:
                from lm_eval.models.huggingface import HFLM  # noqa: F401  the imports evaluate makes
                from lm_eval.tasks import TaskManager

                results["import_seconds"] = time.perf_counter() - start
            warm = timed_eval(model, tok, meter, warm_data, tasks[0], args, limit=1)
            if first:
                results["first_call_seconds"] = warm["seconds"]
                start = time.perf_counter()
                TaskManager()
                results["task_manager_seconds"] = time.perf_counter() - start
                print(f"import lm-eval {results['import_seconds']:.1f} s, first call ({warm['questions']} "
                      f"question) {warm['seconds']:.1f} s; lm-eval's TaskManager() alone "
                      f"{results['task_manager_seconds']:.1f} s", flush=True)  # fmt: skip
            runs: dict = {t: {"small": [], "big": []} for t in tasks}
            for _ in range(args.repeats):
                for task in tasks:
                    for kind, n in (("small", 1), ("big", limit)):
                        r = timed_eval(model, tok, meter, BENCHMARKS, task, args, n)
                        runs[task][kind].append(r)
                        print(f"  {size} {task} --limit {n}: {r['questions']} questions in {r['seconds']:.1f} s "
                              f"(forward {r['forward_seconds']:.1f} s, {r['forward_calls']} calls, "
                              f"{r['tokens'] / r['questions']:,.0f} tokens a question), acc {r['acc']:.3f}",
                              flush=True)  # fmt: skip
            meter.remove()
            # the repeat whose two calls took least together: a small and a big call of the same moment
            best = {
                t: min(
                    zip(kinds["small"], kinds["big"], strict=True),
                    key=lambda p: p[0]["seconds"] + p[1]["seconds"],
                )
                for t, kinds in runs.items()
            }
            best = {t: {"small": small, "big": big} for t, (small, big) in best.items()}
            figures = {t: fit(b["small"], b["big"]) for t, b in best.items()}
            if len(tasks) > 1:  # both tasks' questions pooled: the per-question part only
                pooled = {kind: {k: sum(b[kind][k] for b in best.values()) for k in
                                 ("seconds", "questions", "forward_seconds", "tokens", "padded_tokens")}
                          for kind in ("small", "big")}  # fmt: skip
                pooled["big"]["longest"] = max(b["big"]["longest"] for b in best.values())
                figures["all"] = {**fit(pooled["small"], pooled["big"]), "fixed_seconds": None}
            results["sizes"][size] = {"parameters": parameters, "limit": limit, "warmup": warm,
                                      "figures": figures, "runs": runs}  # fmt: skip
            del model
    results["total_seconds"] = time.perf_counter() - begun
    results["load_after"] = os.getloadavg()

    rows = [
        "| size | parameters | task | questions (--limit 1 / N) | fixed s a call | s per 1,000 questions "
        "| of which forward | one call of 1,000 questions, s | big call's s / questions × 1,000 "
        "| tokens a question (padded) | longest row |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, sized in results["sizes"].items():
        for task, f in sized["figures"].items():
            fixed, per_1000 = f["fixed_seconds"], f["seconds_per_1000"]
            fixed_s, whole = ("—", "—") if fixed is None else (f"{fixed:.1f}", f"{fixed + per_1000:,.0f}")
            rows.append(
                f"| {size} | {sized['parameters'] / 1e6:.1f}M | {'**all**' if task == 'all' else task} "
                f"| {f['small_questions']} / {f['questions']} | {fixed_s} | **{per_1000:,.0f}** "
                f"| {f['forward_per_1000']:,.0f} | {whole} | {f['measured_per_1000']:,.0f} "
                f"| {f['tokens_per_question']:,.0f} ({f['padded_per_question']:,.0f}) | {f['longest']:,} |"
            )
    print()
    print(f"{args.shots}-shot, batch {args.batch_size}, {args.device}, quickest pair of {args.repeats}; not counted: "
          f"import {results['import_seconds']:.1f} s + first call {results['first_call_seconds']:.1f} s; "
          f"load {_load(results['load_after'])} after; {results['total_seconds']:.0f} s in all")  # fmt: skip
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
