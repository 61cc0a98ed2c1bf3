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

from cpt.config import ConfigError, build
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
from trainer.config import TrainConfig

EXPORTED = holds("cpt_export.json")  # an --output is replaced only when it is an earlier export
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
log = logging.getLogger(__name__)


def run_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json; is it the folder of a trainer run?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(str(path), [f"not readable JSON ({e})"]) from None
    return build(TrainConfig, data, str(path))


def base_model(run_dir: Path, cfg: TrainConfig | None = None) -> Path:
    """The model folder a run's architecture and tokenizer come from: its `model.path` (a run started with
    --init-from records the source's), or the `init/` export that earlier releases wrote for --init-from."""
    if (run_dir / "init" / "config.json").is_file():
        return run_dir / "init"
    return Path((cfg or run_config(run_dir)).model.path)


def full_state_dict(run_dir: Path, tag: str, masters: bool = True) -> dict:
    """A checkpoint's weights by parameter name, in fp32.

    masters: the optimizer's fp32 master weights (DeepSpeed's zero_to_fp32: every rank's optimizer file is
    read, moments included). Otherwise the module weights of the model-states file, memory-mapped, in the
    precision the run computed in (bf16 under bf16: what a bf16 export holds), for ZeRO 0-2; a ZeRO-3
    checkpoint, whose model-states files hold no whole weights, falls back to the masters."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    folder = checkpoint.checkpoint_dir(run_dir)
    checkpoint.verify(folder / tag)  # zero_to_fp32 unpickles without restriction: plain data first
    module_file = folder / tag / "mp_rank_00_model_states.pt"  # ZeRO 0-2 (ZeRO-3 names it per rank)
    zero = any((folder / tag).glob("*optim_states.pt")) and any((folder / tag).glob("*zero_pp_rank_*"))
    if zero and (masters or not module_file.is_file()):
        return get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag)
    # ZeRO stage 0 keeps whole weights in the model-states file; read as plain data, as verify did
    states = checkpoint.load_plain(module_file)
    return {k: v.float() for k, v in states["module"].items()}


def trained_model(
    run_dir: str | Path,
    tag: str | None = None,
    masters: bool = True,
    attention: str | None = None,
    weights: bool = True,
    rope=None,
):
    """The run's model with the checkpoint's weights, LoRA merged; and the model folder it started from.

    `tag` is any spelling `checkpoint.resolve_tag` takes; without one, the latest that loads. `masters`:
    as `full_state_dict`; `attention`: the attention implementation to build it with (transformers'
    default when None); `weights=False`: the same model with its initial weights, nothing read (for ranks
    that receive the weights from another); `rope`: the RoPE to build it with (default: the run's
    `model.rope`, so an export after a long-context stage declares its RoPE and length)."""
    from transformers import AutoModelForCausalLM

    from trainer.model import model_config

    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    tag, skipped = checkpoint.choose(run_dir, tag)
    for line in skipped:
        log.warning("warning: %s: passed over, using %s", line, tag)
    base = base_model(run_dir, cfg)
    extra = {"attn_implementation": attention} if attention else {}
    config = model_config(base, rope if rope is not None else cfg.model.rope)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, **extra)
    if cfg.mode == "lora":
        from trainer.model import with_lora

        model = with_lora(model, cfg.lora)
    state = full_state_dict(run_dir, tag, masters) if weights else model.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(
            f"{run_dir}/{tag}: weights do not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    if cfg.mode == "lora":
        model = model.merge_and_unload()
    model.config.use_cache = True  # for generation
    return model, base, tag


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
