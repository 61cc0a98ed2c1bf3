"""The GPU check: what a first run of the trainer on a GPU must show, in one table.

    python benchmarks/gpu_check.py            # one GPU: Llama-3.2-1B's shape and vocabulary, seq 4,096
    python benchmarks/gpu_check.py --small    # CPU: the same checks on a tiny Llama (the test suite runs it)

1. Document masks: under the attention kernel the trainer picks (flash-attention 2 where it is installed
   on a GPU, else sdpa), with micro-batches of 1 and 4 rows of packed documents (a row may start inside
   a document), the largest difference between a document's token losses in the batch and its losses
   alone, beside the same with the documents' boundaries removed (what a leak gives this model, in this
   kernel and precision): kept apart when the first is under a tenth of the second.
2. The loss: the output layer and cross-entropy of one micro-batch of the trainer's shape, forward and
   backward, taken a chunk of tokens at a time (`trainer.model.chunked_token_losses`) against the plain
   computation from the whole logits: peak memory above the inputs (GPU), milliseconds, and the largest
   difference in the losses and in the gradients.
3. Training: `benchmarks/bench_trainer.py` with cpt's trainer and Hugging Face's Trainer on the same
   model, packed document-masked data, precision and DeepSpeed config: tokens/s, MFU, peak memory.

On an H100 it takes about 5 minutes (most of it building the 1.24B-parameter model for each side). The
table goes to stdout and, with --json, every figure to a file.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the model shape of each size: bench_trainer's SHAPES entry, and the micro-batch the loss check uses
SIZES = {"gpu": "1b-llama3", "small": "tiny"}
LEAK_SHARE = 0.1  # kept apart: packed documents' losses differ from alone by < 10% of what a leak gives


def packed_rows(rows: int, length: int, vocab: int, seed: int):
    """`rows` rows of `length` tokens cut from one stream of documents of random lengths (as the loader
    cuts them: positions restart at each document, a row may start inside one)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    total = rows * length
    lengths = []
    while sum(lengths) < total + length:
        lengths.append(int(torch.randint(length // 16 + 2, length // 2, (1,), generator=g)))
    positions = torch.cat([torch.arange(n) for n in lengths])[length // 3 : length // 3 + total]
    ids = torch.randint(3, vocab, (total,), generator=g)
    labels = ids.clone()
    labels[positions == 0] = -100  # a document's first token is no target of the one before it
    view = lambda t: t.view(rows, length)  # noqa: E731
    return {"input_ids": view(ids), "position_ids": view(positions), "labels": view(labels)}


def pieces(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, length) of each document piece of the batch."""
    found = []
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [0] + [i for i, p in enumerate(positions) if p == 0 and i > 0] + [len(positions)]
        found += [(row, a, b - a) for a, b in zip(starts, starts[1:], strict=False) if b - a > 1]
    return found


def check_masks(model, device, length: int, vocab: int) -> dict:
    """{micro-batch: {"masked": largest |packed - alone| over every token of every document piece,
    "unmasked": the same with the documents' position restarts removed (each row one sequence: what a
    kernel that ignores the boundaries computes)}}. A random model's leak is small, so the verdict
    compares the two in the same kernel and precision instead of taking a fixed threshold."""
    import torch

    from trainer.model import token_losses

    results = {}
    for rows in (1, 4):
        batch = packed_rows(rows, length, vocab, seed=rows)
        first = batch["position_ids"][:, :1]
        unmasked = {**batch, "position_ids": first + torch.arange(length)[None]}
        worst = {"masked": 0.0, "unmasked": 0.0}
        with torch.no_grad():
            packed = {"masked": token_losses(model, batch, device)[0],
                      "unmasked": token_losses(model, unmasked, device)[0]}  # fmt: skip
            for row, start, n in pieces(batch):
                alone = {k: batch[k][row : row + 1, start : start + n] for k in batch}
                expected, mask = token_losses(model, alone, device)
                if not mask.any():
                    continue
                for kind, losses in packed.items():
                    got = losses[row : row + 1, start : start + n - 1]
                    worst[kind] = max(worst[kind], float((got - expected)[mask].abs().max()))
        results[rows] = worst
    return results


def kept_apart(found: dict) -> bool:
    """The packed documents are ten times closer to their losses alone than documents that see each other."""
    return found["masked"] < LEAK_SHARE * found["unmasked"]


def check_loss(head, hidden_size: int, tokens: int, device, dtype) -> dict:
    """The chunked loss against the plain one on `tokens` tokens: peak memory above the inputs (GPU),
    median milliseconds of 3, largest differences in the losses and in the gradients."""
    import torch

    from trainer.model import chunked_token_losses

    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).to(device, dtype)
    targets = torch.randint(0, head.weight.shape[0], (1, tokens), generator=g).to(device)
    targets[0, ::7] = -100
    cuda = device.type == "cuda"

    def plain(h):
        logits = head(h).float()
        flat = logits.view(-1, logits.shape[-1])
        return torch.nn.functional.cross_entropy(flat, targets.view(-1), reduction="none", ignore_index=-100)

    def chunked(h):
        return chunked_token_losses(head, h, targets).view(-1)

    figures, outputs = {}, {}
    for name, fn in (("plain", plain), ("chunked", chunked)):
        times, peak = [], None
        for _ in range(3):
            h = hidden.detach().requires_grad_(True)
            head.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            losses = fn(h)
            losses.sum().backward()
            if cuda:
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - before) / 2**30
            times.append((time.perf_counter() - start) * 1e3)
        outputs[name] = (losses.detach().float(), h.grad.float(), head.weight.grad.float())
        figures[name] = {"ms": statistics.median(times), "peak_gib": peak}
    (a, ga, wa), (b, gb, wb) = outputs["plain"], outputs["chunked"]
    figures["max_loss_diff"] = float((a - b).abs().max())
    figures["max_grad_diff"] = max(float((ga - gb).abs().max()), float((wa - wb).abs().max()))
    return figures


def run_trainers(size: str, steps: int, warmup: int, out: Path) -> dict:
    """bench_trainer.py, cpt and HF's Trainer given the same DeepSpeed config: its JSON."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_trainer.py"), "--size", size, "--steps", str(steps),
           "--warmup", str(warmup), "--zero", "auto", "--hf-deepspeed", "--json", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True)
    return json.loads(out.read_text())


def table(results: dict) -> str:
    masks, loss, train = results["masks"], results["loss"], results["trainer"]
    cpt, hf = train["cpt"], train["hf_trainer"]
    pct = lambda x: "–" if x is None else f"{x:.1%}"  # noqa: E731
    gib = lambda x: "–" if x is None else f"{x:.2f} GiB"  # noqa: E731
    memory = "peak GPU memory" if results["device"] != "CPU" else "peak tree RSS"
    mem = (lambda r: gib(r.get("gpu_peak_gib"))) if results["device"] != "CPU" else (
        lambda r: f"{r['tree_rss_mib'] / 1024:.2f} GiB")  # fmt: skip
    rows = [
        ("check", "cpt", "HF Trainer / plain", "verdict"),
        ("---", "---", "---", "---"),
        *[(f"documents kept apart, micro-batch {m} ({results['attention']})", f"max Δ {d['masked']:.2e} nats",
           f"unmasked: {d['unmasked']:.2e}", "ok" if kept_apart(d) else "LEAK") for m, d in masks.items()],
        (f"loss of {results['loss_tokens']:,} tokens: time", f"{loss['chunked']['ms']:.1f} ms",
         f"{loss['plain']['ms']:.1f} ms", f"{loss['chunked']['ms'] / loss['plain']['ms']:.2f}x"),
        ("loss: peak memory above inputs", gib(loss["chunked"]["peak_gib"]), gib(loss["plain"]["peak_gib"]), ""),
        ("loss: max Δ of losses / gradients", f"{loss['max_loss_diff']:.2e} / {loss['max_grad_diff']:.2e}", "", ""),
        (f"training {train['size']}, seq {train['seq_len']}, micro {train['micro_batch']}: tokens/s",
         f"{cpt['tokens_per_s']:,.0f}", f"{hf['tokens_per_s']:,.0f}",
         f"{train['cpt_over_hf']['tokens_per_s']:.2f}x"),
        ("training: MFU", pct(cpt["mfu"]), pct(hf["mfu"]), ""),
        (f"training: {memory}", mem(cpt), mem(hf), ""),
    ]  # fmt: skip
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a tiny Llama on the CPU (what CI runs)")
    parser.add_argument("--steps", type=int, help="training steps a side (default 30 on a GPU, 6 small)")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    import torch

    from benchmarks.bench_trainer import SHAPES, make_model
    from trainer.config import TrainConfig
    from trainer.model import pick_attention, prepare_model

    gpu = torch.cuda.is_available() and not args.small
    size = SIZES["gpu" if gpu else "small"]
    shape = SHAPES[size]
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    attention = pick_attention("auto")
    started = time.perf_counter()
    results = {"device": torch.cuda.get_device_name() if gpu else "CPU", "size": size, "attention": attention,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        from transformers import AutoModelForCausalLM

        make_model(Path(tmp) / "model", shape)
        model = AutoModelForCausalLM.from_pretrained(
            Path(tmp) / "model", attn_implementation=attention, dtype=dtype
        )
        model = prepare_model(model.float(), TrainConfig(mix="check")).to(device, dtype).eval()
        results["masks"] = check_masks(model, device, shape["seq_len"], shape["vocab_size"])
        results["loss_tokens"] = shape["micro"] * shape["seq_len"]
        head = model.get_output_embeddings()
        results["loss"] = check_loss(head, shape["hidden_size"], results["loss_tokens"], device, dtype)
        del model, head
        if gpu:
            torch.cuda.empty_cache()
        steps = args.steps or (30 if gpu else 6)
        results["trainer"] = run_trainers(size, steps, 5 if gpu else 2, Path(tmp) / "trainer.json")
    results["seconds"] = time.perf_counter() - started
    print(table(results))
    print(f"{results['device']}, {attention}, {results['date']}: {results['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(kept_apart(d) for d in results["masks"].values()) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
