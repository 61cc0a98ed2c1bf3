"""Training throughput, MFU and peak memory of cpt's trainer against Hugging Face's Trainer, same model, same data.

    python benchmarks/bench_trainer.py --size tiny                 # CPU: a 0.6M-parameter Llama, seq 256
    python benchmarks/bench_trainer.py --size 100m --steps 40      # CPU: a 125M-parameter Llama, seq 512
    python benchmarks/bench_trainer.py --size 1b --steps 30        # one GPU: Llama-3.2-1B's shape, seq 4096
    python benchmarks/bench_trainer.py --size 136k --steps 4 --warmup 1  # CPU: a 136,320-id vocabulary, seq 2048

Both sides train a randomly initialised Llama of the given shape on the same packed, document-masked
sequences (synthetic token shards planned into one stage and read through cpt's loader; position_ids
mark the documents), one device, the same micro-batch, accumulation, precision, optimizer (AdamW,
betas 0.9/0.95, weight decay 0.1 off norms, clip 1.0), constant LR and attention implementation. cpt
runs `deepspeed trainer/main.py` (ZeRO-2); Hugging Face runs `transformers.Trainer` on the same
`PackedSequences` batches. Each side runs in its own process tree, one after the other, in the order
cpt, HF, HF, cpt, ... over `--repeats`, so a change in the machine's load falls on both alike.

Tokens/s is the median over the steps after `--warmup` (of every repeat); MFU uses the model FLOPs of
trainer/model.py over the device's bf16 peak (GPUs only). Memory is sampled with psutil from a thread
of this process over the side's whole process tree (cpt: the deepspeed launcher, its launch process,
the rank and its loader worker; HF: its process and its DataLoader worker). Every process of the tree
imports torch, so a sum of RSS counts the shared library pages once a process: the tree's PSS (each
shared page split among the processes that map it) is what the tree costs, and both are reported,
with the largest process's own peak RSS (the kernel's high-water mark, VmHWM, exact between samples).
`getrusage(RUSAGE_CHILDREN).ru_maxrss` would give only that last figure, and only over every child
waited for so far, both sides mixed. cpt's run ends with the checkpoint the trainer always writes at
its last step, which HF's side does not write: sampling stops when the checkpoint folder appears.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    # Llama-3.2-1B's shape (tied embeddings) with LLaMA-2's 32k vocabulary: 1.04B parameters (1.24B with its own 128k)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=True, seq_len=4096, micro=4),
    # Llama-3.2-1B itself: its shape and its 128,256-id vocabulary (1.24B parameters, tied), the GPU check's
    # model; micro-batch 2, so that Hugging Face's plain loss (the whole batch's fp32 logits) fits 80 GB
    "1b-llama3": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, seq_len=4096, micro=2),
    # GPT-2-small's width and depth in Llama's form (GQA, SwiGLU, untied), 124.7M parameters, for CPU
    "100m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False, seq_len=512, micro=2),
    # Llama 3.2's tokenizer + 8,000 Chinese tokens (136,320 ids) on a small Llama (71M parameters, almost
    # all of them the two vocabulary matrices): where the output layer's logits decide the memory
    "136k": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=136320, tie_word_embeddings=False, seq_len=2048, micro=2),
    "tiny": dict(hidden_size=64, intermediate_size=168, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=3776, tie_word_embeddings=False, seq_len=256, micro=2),
}  # fmt: skip
RSS_EVERY, TREE_EVERY, PSS_EVERY = 0.25, 2.0, 10.0  # seconds
# A PSS read walks the page tables under the process's mmap lock (~70 ms of CPU for a 3 GiB rank, and
# its page faults wait meanwhile): read at most every PSS_EVERY, and only when the tree's RSS is near
# its peak, which a training step reaches once a step
PSS_NEAR_PEAK = 0.97
MiB = 2**20


def make_model(folder: Path, shape: dict) -> int:
    """A random Llama of `shape` and a word-level tokenizer of its vocabulary (the trainer checks that the
    model folder holds the tokenizer the shards were made with); the parameter count."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{k: v for k, v in shape.items() if k not in ("seq_len", "micro")},
        max_position_embeddings=shape["seq_len"],
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    vocab = {f"<{i}>": i for i in range(shape["vocab_size"])}
    Tokenizer(WordLevel(vocab, unk_token="<0>")).save(str(folder / "tokenizer.json"))
    return sum(p.numel() for p in model.parameters())


def make_stage(root: Path, tokenizer: Path, shape: dict, sequences: int) -> Path:
    from cpt.manifest import write_stage_manifest
    from cpt.mix.plan import plan
    from cpt.mix.stage import Replay, Source, Stage
    from cpt.tokens import write_manifest

    tokens = sequences * shape["seq_len"]
    rng = np.random.default_rng(0)
    wide = shape["vocab_size"] > 2**16  # ids past uint16: 4-byte tokens, as `tokenize` writes them
    for name, share in (("new", 0.75), ("old", 0.25)):
        folder = root / name
        folder.mkdir()
        size = int(tokens * share * 1.2)
        lengths = np.clip(rng.lognormal(np.log(700) - 0.5, 1.0, size // 300), 16, 20_000).astype(np.int64)
        ends = np.cumsum(lengths)
        ends = np.append(ends[ends < size], size).astype(np.uint64)
        dtype = np.uint32 if wide else np.uint16
        rng.integers(3, shape["vocab_size"], size, dtype=dtype).tofile(folder / "00000_unshuffled.ds")
        ends.tofile(folder / "00000_unshuffled.ds.index")
        write_manifest(folder, name, tokenizer, 4 if wide else 2)
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


class TreeMemory:
    """Peak memory of a process and all its descendants, sampled from a thread until the process ends
    or `stop_at` exists: the sum of their RSS, the sum of their PSS, and the largest VmHWM (bytes)."""

    def __init__(self, pid: int, stop_at: Path | None = None):
        self.pid, self.stop_at = pid, stop_at
        self.rss = self.pss = self.largest = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:  # it ended before the first sample
            return
        tree, listed, pss_read = [root], 0.0, 0.0
        while not self._done.is_set() and not (self.stop_at and self.stop_at.exists()):
            if time.monotonic() - listed >= TREE_EVERY:  # listing walks every process of the machine
                try:
                    tree, listed = [root, *root.children(recursive=True)], time.monotonic()
                except psutil.NoSuchProcess:
                    return
            alive, rss = [], 0
            for proc in tree:
                try:
                    rss += proc.memory_info().rss
                    self.largest = max(self.largest, _vm_hwm(proc.pid))
                    alive.append(proc)
                except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                    continue
            if rss >= PSS_NEAR_PEAK * self.rss and time.monotonic() - pss_read >= PSS_EVERY:
                try:
                    self.pss = max(self.pss, sum(_smaps_pss(proc.pid) for proc in alive))
                except (FileNotFoundError, ProcessLookupError):
                    pass
                pss_read = time.monotonic()
            self.rss = max(self.rss, rss)
            self._done.wait(RSS_EVERY)

    def stop(self) -> dict:
        self._done.set()
        self._thread.join()
        return {
            "tree_rss_mib": self.rss / MiB,
            "tree_pss_mib": self.pss / MiB,
            "largest_mib": self.largest / MiB,
        }


def _smaps_pss(pid: int) -> int:
    return _proc_field(f"/proc/{pid}/smaps_rollup", "Pss:")


def _vm_hwm(pid: int) -> int:
    return _proc_field(f"/proc/{pid}/status", "VmHWM:")


def _proc_field(path: str, key: str) -> int:
    """A `key: N kB` line of a /proc file in bytes; 0 for a process that has exited but not yet been
    waited for (its memory is gone and the line with it)."""
    with open(path) as f:
        return next((int(line.split()[1]) * 1024 for line in f if line.startswith(key)), 0)


def run_measured(cmd: list[str], what: str, stop_at: Path | None = None) -> dict:
    """Run `cmd` from the repository root, its process tree's memory sampled; exit with its stderr when
    it fails."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(proc.pid, stop_at)
    _, stderr = proc.communicate()
    peaks = memory.stop()
    if proc.returncode:
        sys.exit(f"{what} failed:\n{stderr[-3000:]}")
    return peaks


def write_config(config: Path, model: Path, args, shape: dict) -> Path:
    """cpt's trainer config for this benchmark's settings."""
    config.write_text(
        f"""
model: {{path: {model}, attention: {args.attention}}}
data: {{micro_batch_size: {shape["micro"]}, gradient_accumulation: {args.accumulation}, workers: 1}}
optim: {{lr: 1.0e-4}}
schedule: {{kind: constant, warmup_ratio: 0.0}}
deepspeed: {{zero_stage: {args.zero}, bf16: {str(args.precision == "bf16").lower()}}}
checkpoint: {{every: 1000000, keep: 1}}
log: {{every: 1, tensorboard: false}}
max_steps: {args.steps}
"""
    )
    return config


def run_cpt(run: Path, manifest: Path, model: Path, args, shape: dict) -> tuple[list[float], dict]:
    config = write_config(run.with_suffix(".yaml"), model, args, shape)
    # a port of its own: DeepSpeed's default (29500) may be held by another run on the machine
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port", _free_port(),
           "trainer/main.py", "--mix", str(manifest), "--config", str(config), "--output", str(run)]  # fmt: skip
    from cpt.report.collect import read_metrics
    from trainer.checkpoint import checkpoint_dir

    memory = run_measured(cmd, "cpt trainer", stop_at=checkpoint_dir(run))

    metrics = read_metrics(run)
    rates = [
        metrics[s]["tokens_per_s"]
        for s in sorted(metrics)
        if s > args.warmup and "tokens_per_s" in metrics[s]
    ]
    peaks = [m["peak_memory_gib"] for m in metrics.values() if "peak_memory_gib" in m]  # GPU runs only
    return rates, {**memory, "gpu_peak_gib": max(peaks) if peaks else None}


def run_hf(run: Path, manifest: Path, model: Path, args, shape: dict) -> tuple[list[float], dict]:
    cmd = [sys.executable, __file__, "--hf-worker", str(run), "--mix", str(manifest), "--model", str(model),
           "--size", args.size, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--accumulation", str(args.accumulation), "--precision", args.precision,
           "--attention", args.attention, "--zero", args.zero]  # fmt: skip
    cmd += ["--hf-deepspeed"] if args.hf_deepspeed else []
    memory = run_measured(cmd, "HF Trainer")
    done = json.loads((run / "rates.json").read_text())
    return done["rates"], {**memory, "gpu_peak_gib": done["gpu_peak_gib"]}


def train_hf(
    run: Path, manifest: Path, model_dir: Path, args, shape: dict
) -> tuple[list[float], float | None]:
    """Hugging Face's Trainer on the stage's packed sequences, in this process: tokens/s of each step
    after the warmup, and the GPU's peak memory (GiB; None on CPU)."""
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

    deepspeed = None
    if args.hf_deepspeed:  # the config cpt's trainer gives DeepSpeed for the same settings, one rank
        from trainer.config import load_config
        from trainer.engine import deepspeed_config

        cfg = load_config(
            str(write_config(run.with_suffix(".yaml"), model_dir, args, shape)), [f"mix={manifest}"]
        )
        cfg.deepspeed.zero_stage = cfg.deepspeed.stage_for(1)
        deepspeed = deepspeed_config(cfg)
        os.environ.update(
            RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=_free_port()
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, attn_implementation=args.attention, dtype=torch.float32
    )
    model.config.use_cache = False
    timer = StepTimes()
    training = TrainingArguments(
        output_dir=str(run),
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
        deepspeed=deepspeed,
    )
    Trainer(model=model, args=training, train_dataset=Packed(), callbacks=[timer]).train()
    tokens = shape["micro"] * args.accumulation * shape["seq_len"]
    rates = [
        tokens / (b - a)
        for a, b in zip(timer.times[args.warmup :], timer.times[args.warmup + 1 :], strict=False)
    ]
    return rates, torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the median")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, alternating")
    parser.add_argument("--precision", choices=["bf16", "fp32"], help="default: bf16 on GPU, fp32 on CPU")
    parser.add_argument("--attention", default="auto", help="auto, sdpa, flash_attention_2, ...")
    parser.add_argument(
        "--zero",
        choices=["auto", "0", "1", "2", "3"],
        default="2",
        help="cpt's ZeRO stage (auto: the trainer's choice for one rank)",
    )
    parser.add_argument(
        "--hf-deepspeed",
        action="store_true",
        help="give HF's Trainer the DeepSpeed config cpt's trainer builds (default: none)",
    )
    parser.add_argument("--json", help="also write the results here")
    # one HF Trainer run, started by this script in a process of its own so its memory is its own
    parser.add_argument("--hf-worker", metavar="RUN", help=argparse.SUPPRESS)
    parser.add_argument("--mix", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < args.warmup + 2 or args.repeats < 1:
        parser.error(f"--steps must exceed --warmup by 2 or more and --repeats be >= 1 (got --steps {args.steps}, "
                     f"--warmup {args.warmup}, --repeats {args.repeats})")  # fmt: skip
    import torch

    from trainer.model import flops_per_token, peak_flops, pick_attention

    shape = SHAPES[args.size]
    if args.hf_worker:
        rates, peak = train_hf(Path(args.hf_worker), Path(args.mix), Path(args.model), args, shape)
        (Path(args.hf_worker) / "rates.json").write_text(json.dumps({"rates": rates, "gpu_peak_gib": peak}))
        return
    args.precision = args.precision or ("bf16" if torch.cuda.is_available() else "fp32")
    args.attention = pick_attention(args.attention)  # one choice, passed to both sides
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    machine = {
        "device": _device_name(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": os.getloadavg(),
        "code": _code_version(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        root = Path(tmp)
        parameters = make_model(root / "model", shape)
        sequences = (args.steps + 2) * shape["micro"] * args.accumulation
        manifest = make_stage(root, root / "model" / "tokenizer.json", shape, sequences)
        from transformers import AutoConfig

        flops = flops_per_token(AutoConfig.from_pretrained(root / "model"), shape["seq_len"])
        peak = peak_flops(None)
        print(
            f"{args.size}: Llama of {parameters:,} parameters (hidden {shape['hidden_size']}, "
            f"{shape['num_hidden_layers']} layers, {shape['num_attention_heads']}/"
            f"{shape['num_key_value_heads']} heads, vocab {shape['vocab_size']:,}), seq {shape['seq_len']}, "
            f"micro-batch {shape['micro']} x {args.accumulation}, {args.precision}, {args.attention}; "
            f"{machine['cpu']} x {machine['cores']}, load {_load(machine['load_before'])}; code {machine['code']}",
            flush=True,
        )
        sides = {"cpt": run_cpt, "hf_trainer": run_hf}
        runs = {name: [] for name in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(sides)[::-1]
            for name in order:
                rates, memory = sides[name](root / f"{name}_{repeat}", manifest, root / "model", args, shape)
                runs[name].append({"tokens_per_s": statistics.median(rates), "rates": rates, **memory})
                print(f"  {name} run {repeat + 1}: {_describe(runs[name][-1])}", flush=True)
        results = {"size": args.size, "parameters": parameters, "precision": args.precision,
                   "attention": args.attention, "steps": args.steps, "warmup": args.warmup,
                   "micro_batch": shape["micro"], "accumulation": args.accumulation,
                   "seq_len": shape["seq_len"], **machine}  # fmt: skip
        for name, done in runs.items():
            tokens_per_s = statistics.median(r for run in done for r in run["rates"])
            results[name] = {
                "tokens_per_s": tokens_per_s,
                "tflops": tokens_per_s * flops / 1e12,
                "mfu": tokens_per_s * flops / peak if peak else None,
                **{k: max(run[k] for run in done) for k in ("tree_rss_mib", "tree_pss_mib", "largest_mib")},
                "runs": done,
            }
            mfu = f", MFU {results[name]['mfu']:.1%}" if peak else ""
            print(f"{name:>10}: {_describe(results[name])}, {results[name]['tflops']:.3f} TFLOP/s{mfu}")
        results["load_after"] = os.getloadavg()
        cpt, hf = results["cpt"], results["hf_trainer"]
        results["cpt_over_hf"] = {
            k: cpt[k] / hf[k] for k in ("tokens_per_s", "tree_rss_mib", "tree_pss_mib", "largest_mib")
        }
        ratio = results["cpt_over_hf"]
        print(
            f"cpt / HF Trainer: tokens/s {ratio['tokens_per_s']:.2f}x, peak tree RSS {ratio['tree_rss_mib']:.2f}x, "
            f"tree PSS {ratio['tree_pss_mib']:.2f}x, largest process {ratio['largest_mib']:.2f}x "
            f"({args.size}, {args.precision}, {results['device']}; load {_load(results['load_after'])} after)"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _code_version() -> str:
    """The commit measured, and the files of the trainer and the library that differ from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        changed = subprocess.run([*git, "status", "--porcelain", "--", "trainer", "cpt"], capture_output=True,
                                 text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    files = [line[3:] for line in changed.stdout.splitlines()]
    return head.stdout.strip() + (f" + changes to {', '.join(files)}" if files else "")


def _describe(result: dict) -> str:
    return (
        f"{result['tokens_per_s']:,.0f} tokens/s, peak tree RSS {result['tree_rss_mib']:,.0f} MiB, "
        f"tree PSS {result['tree_pss_mib']:,.0f} MiB, largest process {result['largest_mib']:,.0f} MiB"
    )


def _load(averages: tuple[float, float, float]) -> str:
    return " ".join(f"{a:.2f}" for a in averages)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        return "?"


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"


if __name__ == "__main__":
    main()
