"""Training throughput and MFU of cpt's trainer against Hugging Face's Trainer, same model, same data.

    python benchmarks/bench_trainer.py --size tiny                 # CPU: a 0.6M-parameter Llama, seq 256
    python benchmarks/bench_trainer.py --size 1b --steps 30        # one GPU: Llama-3.2-1B's shape, seq 4096

Both sides train a randomly initialised Llama of the given shape on the same packed, document-masked
sequences (synthetic token shards planned into one stage and read through cpt's loader), one device,
the same micro-batch, accumulation, precision, optimizer (AdamW) and attention implementation. cpt
runs `deepspeed trainer/main.py` (ZeRO-2); Hugging Face runs `transformers.Trainer` on the same
`PackedSequences` batches. Tokens/s is the median over steps after `--warmup`; MFU uses the model
FLOPs of trainer/model.py over the device's bf16 peak (GPUs only). Both run in one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    # Llama-3.2-1B (1.24B parameters, tied embeddings), with LLaMA-2's 32k vocabulary
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True, seq_len=4096, micro=4),
    "tiny": dict(hidden_size=64, intermediate_size=168, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=3776, tie_word_embeddings=False, seq_len=256, micro=2),
}  # fmt: skip


def make_model(folder: Path, shape: dict) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{k: v for k, v in shape.items() if k not in ("seq_len", "micro")},
        max_position_embeddings=shape["seq_len"],
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)


def make_stage(root: Path, shape: dict, sequences: int) -> Path:
    from cpt.manifest import write_stage_manifest
    from cpt.mix.plan import plan
    from cpt.mix.stage import Replay, Source, Stage
    from cpt.tokens import write_manifest

    tokenizer = root / "tokenizer.json"
    tokenizer.write_text('{"model": "bench"}')
    tokens = sequences * shape["seq_len"]
    rng = np.random.default_rng(0)
    for name, share in (("new", 0.75), ("old", 0.25)):
        folder = root / name
        folder.mkdir()
        size = int(tokens * share * 1.2)
        lengths = np.clip(rng.lognormal(np.log(700) - 0.5, 1.0, size // 300), 16, 20_000).astype(np.int64)
        ends = np.cumsum(lengths)
        ends = np.append(ends[ends < size], size).astype(np.uint64)
        rng.integers(3, shape["vocab_size"], size, dtype=np.uint16).tofile(folder / "00000_unshuffled.ds")
        ends.tofile(folder / "00000_unshuffled.ds.index")
        write_manifest(folder, name, tokenizer, 2)
    stage = Stage(
        name="bench",
        seq_len=shape["seq_len"],
        tokens=tokens,
        seed=0,
        sources=[Source(name="new", path=str(root / "new"), weight=1.0)],
        replay=Replay(share=0.25, sources=[Source(name="old", path=str(root / "old"))]),
    )
    write_stage_manifest(plan(stage), root / "mix")
    return root / "mix" / "manifest.json"


def run_cpt(root: Path, manifest: Path, model: Path, args, shape: dict) -> list[float]:
    config = root / "cpt.yaml"
    config.write_text(
        f"""
model: {{path: {model}, attention: {args.attention}}}
data: {{micro_batch_size: {shape["micro"]}, gradient_accumulation: {args.accumulation}, workers: 1}}
optim: {{lr: 1.0e-4}}
schedule: {{kind: constant, warmup_ratio: 0.0}}
deepspeed: {{zero_stage: 2, bf16: {str(args.precision == "bf16").lower()}}}
checkpoint: {{every: 1000000, keep: 1}}
log: {{every: 1, tensorboard: false}}
max_steps: {args.steps}
"""
    )
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "trainer/main.py",
           "--mix", str(manifest), "--config", str(config), "--output", str(root / "cpt_run")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"cpt trainer failed:\n{proc.stderr[-3000:]}")
    from cpt.report.collect import read_metrics

    metrics = read_metrics(root / "cpt_run")
    return [
        metrics[s]["tokens_per_s"]
        for s in sorted(metrics)
        if s > args.warmup and "tokens_per_s" in metrics[s]
    ]


def run_hf(root: Path, manifest: Path, model_dir: Path, args, shape: dict) -> list[float]:
    import torch
    from torch.utils.data import IterableDataset
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from cpt.data import PackedSequences
    from cpt.manifest import read_stage_manifest

    class Packed(IterableDataset):
        def __iter__(self):
            seqs = PackedSequences(read_stage_manifest(manifest), batch_size=1)
            for batch in seqs.batches():
                yield {k: torch.from_numpy(batch[k][0]) for k in ("input_ids", "labels", "position_ids")}

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    attention = (
        args.attention if args.attention != "auto" else ("flash_attention_2" if _has_flash() else "sdpa")
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=attention, dtype=torch.float32
    )
    model.config.use_cache = False
    timer = StepTimes()
    training = TrainingArguments(
        output_dir=str(root / "hf_run"),
        per_device_train_batch_size=shape["micro"],
        gradient_accumulation_steps=args.accumulation,
        max_steps=args.steps,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        adam_beta1=0.9,
        adam_beta2=0.95,
        weight_decay=0.1,
        max_grad_norm=1.0,
        optim="adamw_torch",
        bf16=args.precision == "bf16",
        logging_steps=10**9,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=1,
        use_cpu=not torch.cuda.is_available(),
    )
    Trainer(model=model, args=training, train_dataset=Packed(), callbacks=[timer]).train()
    tokens = shape["micro"] * args.accumulation * shape["seq_len"]
    return [
        tokens / (b - a)
        for a, b in zip(timer.times[args.warmup :], timer.times[args.warmup + 1 :], strict=False)
    ]


def _has_flash() -> bool:
    import torch

    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--attention", default="auto", help="auto, sdpa, flash_attention_2, ...")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    from trainer.model import flops_per_token, peak_flops

    args.precision = args.precision or ("bf16" if torch.cuda.is_available() else "fp32")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    shape = SHAPES[args.size]
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = Path(tmp)
        make_model(root / "model", shape)
        manifest = make_stage(root, shape, (args.steps + 2) * shape["micro"] * args.accumulation)
        from transformers import AutoConfig

        flops = flops_per_token(AutoConfig.from_pretrained(root / "model"), shape["seq_len"])
        peak = peak_flops(None)
        results = {
            "size": args.size,
            "precision": args.precision,
            "device": _device_name(),
            "steps": args.steps,
        }
        for name, run in (("cpt", run_cpt), ("hf_trainer", run_hf)):
            rates = run(root, manifest, root / "model", args, shape)
            tokens_per_s = statistics.median(rates)
            results[name] = {
                "tokens_per_s": tokens_per_s,
                "tflops": tokens_per_s * flops / 1e12,
                "mfu": tokens_per_s * flops / peak if peak else None,
            }
            mfu = f", MFU {results[name]['mfu']:.1%}" if peak else ""
            print(
                f"{name:>10}: {tokens_per_s:,.0f} tokens/s, {tokens_per_s * flops / 1e12:.3f} TFLOP/s{mfu}",
                flush=True,
            )
        ratio = results["cpt"]["tokens_per_s"] / results["hf_trainer"]["tokens_per_s"]
        results["cpt_over_hf"] = ratio
        print(f"cpt / HF Trainer: {ratio:.2f}x ({args.size}, {args.precision}, {results['device']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    main()
