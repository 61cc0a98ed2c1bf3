"""Export a training checkpoint as a Hugging Face model folder (bf16 safetensors + the tokenizer).

    python trainer/export.py --checkpoint runs/train/stage2 [--step N] --output runs/export/stage2

ZeRO checkpoint → full fp32 weights (DeepSpeed's zero_to_fp32) → the run's model rebuilt from its
config.json (LoRA adapters merged into the weights) → `save_pretrained`, written to a temporary folder
and renamed. The result loads with `AutoModelForCausalLM.from_pretrained` and generates.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from cpt.config import ConfigError
from cpt.io import (
    CustomCodeError,
    OutputError,
    check_replaceable,
    exit_on_disk_fault,
    holds,
    output_lock,
    refuse_custom_code,
    wrapped_disk_full,
    written_dir,
)
from trainer import checkpoint
from trainer.run_folder import trained_model

EXPORTED = holds("cpt_export.json")  # an --output is replaced only when it is an earlier export
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
log = logging.getLogger(__name__)


def export(run_dir: str | Path, output: str | Path, tag: str | None = None, dtype=torch.bfloat16) -> Path:
    output = Path(output)
    check_replaceable(output, EXPORTED, "trainer/export.py")  # before the work: not the model it started from
    model, base, tag = trained_model(run_dir, tag)
    from safetensors import SafetensorError

    with written_dir(output, EXPORTED, "trainer/export.py") as tmp:
        try:
            model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        except (SafetensorError, RuntimeError) as e:  # they wrap a failed write's OSError in their own
            full = wrapped_disk_full(e, tmp)
            if full is None:
                raise
            full.filename = str(output)
            raise full from None
        for name in TOKENIZER_FILES:
            if (base / name).is_file():
                shutil.copy2(base / name, tmp / name)
        (tmp / "cpt_export.json").write_text(
            json.dumps({"run": str(run_dir), "checkpoint": tag}, indent=2) + "\n"
        )
    return output


def generate(model_dir: str | Path, prompt: str, max_new_tokens: int = 32) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    refuse_custom_code(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, trust_remote_code=False)
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python trainer/export.py",
        description="Export a trainer checkpoint as a Hugging Face model folder (bf16 safetensors, tokenizer, "
        "LoRA merged).",
    )
    parser.add_argument("--checkpoint", required=True, help="the run folder (runs/train/STAGE)")
    parser.add_argument(
        "--step",
        help="the checkpoint of this step: N, step_N or step_0000000N (default: the latest that loads)",
    )
    parser.add_argument("--output", required=True, help="the Hugging Face folder to write")
    parser.add_argument(
        "--prompt", help="then load the export and print a greedy continuation of this prompt"
    )
    args = parser.parse_args(argv)
    try:
        with output_lock(args.output, "trainer/export.py"):
            path = export(args.checkpoint, args.output, args.step)
    except (
        FileNotFoundError, RuntimeError, OutputError, ConfigError, checkpoint.CheckpointError, CustomCodeError
    ) as e:  # fmt: skip
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output's disk full or read-only: one line, not a traceback
        return exit_on_disk_fault(e)
    print(f"wrote {path}")
    if args.prompt:
        print(generate(path, args.prompt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
