"""A trainer run folder's own records: reading its config.json, the model folder it started from, and a
checkpoint's weights as a whole model (what `export`, `--init-from`, `cpt eval RUN` and a resumed run's
RoPE check read); and writing config.json and run.json when a run starts (checkpoints are
`trainer.checkpoint`'s, metrics `trainer.metrics`')."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cpt.config import ConfigError, build
from cpt.io import write_json
from trainer import checkpoint
from trainer.config import TrainConfig

if TYPE_CHECKING:
    from trainer.preflight import Start

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


def write_run_files(
    cfg: TrainConfig, manifest: dict, run_dir: Path, start: Start, tokens_per_step: int, shape: dict
) -> None:
    """config.json (what export and init-from rebuild the model from) and, for a new run, run.json
    (where its weights came from, so a report can chain stages). Rank 0 only."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", asdict(cfg))
    if start.resume_tag:
        return
    source = None
    if start.init_tag:  # RUN:step_N, the run folder made absolute: found from any folder
        source = f"{Path(start.init_source).resolve()}:{start.init_tag}"
    origin = {
        "stage": manifest["stage"],
        "manifest_hash": manifest["manifest_hash"],
        "init_from": source,
        "model": str(cfg.model.path),
        "tokens_per_step": tokens_per_step,
        **shape,  # the ramps' boundaries and the anneal, for the report
    }
    write_json(run_dir / "run.json", origin)
