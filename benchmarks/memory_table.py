"""The memory a GPU needs to train a model of each size in each mode, computed: the README's table.

    python benchmarks/memory_table.py [--micro 1] [--gpus 8]

Per GPU, bf16 weights with fp32 master weights and AdamW moments (DeepSpeed's bf16), gradient
checkpointing on (cpt.yaml's default), flash-attention or sdpa without a dense mask, in GiB:

    model states   full: 16 B a parameter on one GPU (bf16 weight 2 + bf16 gradient 2 + fp32 master 4
                   + AdamW moments 8); ZeRO-2 over N GPUs: 4 + 12/N; ZeRO-3: 16/N.
                   lora: 2 B a frozen parameter + 16 B a trainable one (rank-64 adapters on the seven
                   projections, and the embeddings and output layer whole: `lora.modules_to_save`).
                   embeddings: 2 B a frozen parameter + 16 B a row parameter (input and output rows).
    activations    2 s h L bytes a sequence (the bf16 hidden state each checkpointed layer keeps) + 34 s h
                   (the layer being recomputed: Korthikanti et al. 2022, "Reducing Activation
                   Recomputation in Large Transformer Models", without the attention scores, which
                   flash-attention and memory-efficient sdpa never store), times the micro-batch.
    loss           0.6 GiB: one chunk of 2^26 logits (fp32, their bf16 source and their gradient);
                   the plain loss would hold micro x s x vocab x 10 B instead.

Not counted: the CUDA context and the allocator's slack (1-2 GiB), DeepSpeed's communication buckets
(ZeRO-2: 2 x 5e8 elements by default unless set lower).
"""

from __future__ import annotations

import argparse

GiB = 2**30
MODELS = {
    # name: parameters, hidden, layers, vocabulary, tied, MLP width, KV width
    "Llama-3.2-1B": (1.236e9, 2048, 16, 128256, True, 8192, 512),
    "Llama-3.2-3B": (3.213e9, 3072, 28, 128256, True, 8192, 1024),
    "LLaMA-2-7B": (6.738e9, 4096, 32, 32000, False, 11008, 4096),
    "Llama-3-8B": (8.030e9, 4096, 32, 128256, False, 14336, 1024),
}
LOSS = 0.6 * GiB


def lora_parameters(hidden: int, layers: int, mlp: int, kv: int, r: int = 64) -> int:
    """Rank-r adapters (A: in x r, B: r x out) on q, k, v, o, gate, up and down."""
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, mlp), (hidden, mlp),
              (mlp, hidden)]  # fmt: skip
    return layers * sum(r * (a + b) for a, b in shapes)


def needed(model: str, mode: str, seq: int, micro: int = 1, gpus: int = 1, zero: int = 2) -> float:
    params, hidden, layers, vocab, tied, mlp, kv = MODELS[model]
    rows = vocab * hidden * (1 if tied else 2)
    if mode == "full":
        states = params * (16 if gpus == 1 else 4 + 12 / gpus if zero == 2 else 16 / gpus)
    elif mode == "lora":  # the embeddings and head whole beside the adapters (a tied pair stays one matrix)
        states = 2 * params + 16 * (lora_parameters(hidden, layers, mlp, kv) + rows)
    else:
        states = 2 * params + 16 * rows
    activations = micro * (2 * seq * hidden * layers + 34 * seq * hidden)
    return (states + activations + LOSS) / GiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=8, help="for the full mode's ZeRO-2 and ZeRO-3 columns")
    args = parser.parse_args()
    n = args.gpus
    print(
        f"| model | seq | full, 1 GPU | full, ZeRO-2 x {n} | full, ZeRO-3 x {n} | LoRA r64 + embeddings | embeddings |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model in MODELS:
        for seq in (4096, 8192):
            cells = [needed(model, "full", seq, args.micro), needed(model, "full", seq, args.micro, n, 2),
                     needed(model, "full", seq, args.micro, n, 3), needed(model, "lora", seq, args.micro),
                     needed(model, "embeddings", seq, args.micro)]  # fmt: skip
            print(f"| {model} | {seq:,} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
