"""Make a tiny random Llama for tests and the demo: `python -m cpt.demo.tiny_model --tokenizer DIR --output DIR`.

Its vocabulary is the tokenizer's (padded to a multiple of 64), its special ids are the tokenizer's,
and the tokenizer files are copied beside it, so the folder is a complete Hugging Face model.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# the RoPE base and context of the families a tiny model stands in for (their published configs)
FAMILIES = {
    "llama2": {"rope_theta": 10_000.0, "max_position_embeddings": 4096},
    "llama3": {"rope_theta": 500_000.0, "max_position_embeddings": 8192},
    "qwen2": {"rope_theta": 1_000_000.0, "max_position_embeddings": 32768},
}


def family_of(tokenizer: str | Path) -> str:
    """`llama3` for a byte-level BPE `tokenizer.json` (Llama 3's kind), else `llama2` (SentencePiece)."""
    import json

    path = Path(tokenizer) / "tokenizer.json"
    try:
        pre = json.loads(path.read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    except (OSError, ValueError):
        return "llama2"
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers") or [] if isinstance(p, dict)}
    return "llama3" if "ByteLevel" in kinds else "llama2"


def make_tiny_llama(
    tokenizer: str | Path,
    output: str | Path,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    tied: bool = False,
    family: str | None = None,
) -> Path:
    """The model folder written: a random Llama of this shape over the tokenizer's vocabulary; `tied`: one
    matrix for the input embedding and the output head (`tie_word_embeddings`, as Llama-3.2-1B and Qwen2);
    the RoPE base and context of `family` (default: the tokenizer's, `family_of`)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    shape = FAMILIES[family or family_of(tokenizer)]
    tokenizer = Path(tokenizer)
    if (tokenizer / "tokenizer.json").is_file():
        tok = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=False)
        size, bos, eos, pad = len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    else:  # a bare SentencePiece model (`cpt-tok train` output)
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer / "tokenizer.model"))
        size, bos, eos, pad = sp.get_piece_size(), sp.bos_id(), sp.eos_id(), None
    vocab = -(-size // 64) * 64
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3 // 8 * 8,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        **shape,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    output = Path(output)
    LlamaForCausalLM(config).save_pretrained(output)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"):
        if (tokenizer / name).is_file():
            shutil.copy2(tokenizer / name, output / name)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cpt.demo.tiny_model",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (e.g. from `cpt-tok merge`)")
    parser.add_argument("--output", required=True, help="the model folder to write (a new one)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden size (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default: %(default)s)")
    parser.add_argument(
        "--heads",
        type=int,
        default=4,
        help="attention heads, key/value heads half of them (default: %(default)s)",
    )
    parser.add_argument(
        "--family",
        choices=sorted(FAMILIES),
        help="whose RoPE base and context to take: llama2 10,000 and 4,096, llama3 500,000 and 8,192, "
        "qwen2 1,000,000 and 32,768 (default: llama3 for a byte-level BPE tokenizer, else llama2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the random weights' seed (default: %(default)s)")
    parser.add_argument(
        "--tied", action="store_true", help="one matrix for the input embedding and the output head"
    )
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        print(f"error: {output}: exists and is not empty; choose a new folder (nothing is overwritten)",
              file=sys.stderr)  # fmt: skip
        return 2
    family = args.family or family_of(args.tokenizer)
    path = make_tiny_llama(args.tokenizer, output, args.hidden, args.layers, args.heads, args.seed, args.tied,
                           family)  # fmt: skip
    print(f"wrote {path} ({family}: RoPE theta {FAMILIES[family]['rope_theta']:,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
