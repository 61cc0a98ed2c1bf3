"""Continued pre-training with DeepSpeed: `deepspeed trainer/main.py --mix stage2 [--set key=value ...]`.

Reads top to bottom: config → manifest → model → data → engine → (resume) → loop (forward, backward,
step, log, evaluate, checkpoint) → final checkpoint. On CPU it runs on gloo (`deepspeed --num_gpus 2`
starts two CPU ranks); on GPUs it runs unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from cpt.config import ConfigError
from cpt.data import PackedLoader
from cpt.io import OutputError, check_replaceable, write_json
from cpt.manifest import ManifestError, read_stage_manifest
from trainer import checkpoint
from trainer.config import TrainConfig, load_config
from trainer.evaluate import evaluate, token_losses
from trainer.export import EXPORTED
from trainer.metrics import RunLogger, SourceLosses
from trainer.model import (
    WeightEMA,
    flops_per_token,
    load_model,
    parameter_groups,
    peak_flops,
    trainable_summary,
)
from trainer.schedule import Schedule

log = logging.getLogger("cpt.trainer")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "trainer" / "configs" / "cpt.yaml"


class RunError(ValueError):
    """A run that cannot start or continue as asked; the message is the one line the user sees."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deepspeed trainer/main.py",
        description="Continued pre-training of a Hugging Face Llama-family model on a stage manifest, with "
        "DeepSpeed ZeRO, bf16, the CPT recipe, held-out perplexity of the old and new domains, and exact "
        "resume.",
        epilog="Example: deepspeed --num_gpus 2 trainer/main.py --mix stage2 --model runs/demo/model "
        "--set optim.lr=1e-4 --set checkpoint.every=50",
    )
    parser.add_argument("--mix", help="a stage name (runs/mixes/NAME/manifest.json) or a manifest path")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="trainer YAML (trainer/configs/cpt.yaml)"
    )
    parser.add_argument("--model", help="Hugging Face model folder (model.path)")
    parser.add_argument("--output", help="run folder (default runs/train/<stage>)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        nargs="?",
        const=checkpoint.LATEST,
        metavar="STEP",
        help="continue this run from its latest complete checkpoint, or from the one named (step_8, "
        "step_00000008 or 8); a damaged latest one is passed over, with a warning",
    )
    start.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new stage from another run's weights (its folder, or folder:step_N): fresh optimizer, "
        "new warmup",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and plan, then exit"
    )
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    parser.add_argument(
        "positional_overrides",
        nargs="*",
        metavar="key=value",
        help="the older spelling of --set key=value, kept for this release; applied before the --set ones",
    )
    args = parser.parse_args(argv)
    if args.resume is not None and "=" in args.resume:  # `--resume key=value`: an override, not a step
        args.positional_overrides.insert(0, args.resume)
        args.resume = checkpoint.LATEST
    args.overrides = [*args.positional_overrides, *args.overrides]
    return args


def find_manifest(mix: str) -> dict:
    """The manifest a `--mix` names; missing or stale is an error that names the build command."""
    path = Path(mix)
    stage_file = REPO / "mixes" / f"{path.stem if path.suffix == '.yaml' else path.name}.yaml"
    if path.suffix == ".yaml":
        path = Path("runs") / "mixes" / path.stem
    elif not path.exists():
        path = Path("runs") / "mixes" / mix
    build = f"cpt-mix build {stage_file.relative_to(REPO) if stage_file.is_file() else 'mixes/STAGE.yaml'}"
    try:
        manifest = read_stage_manifest(path)
    except ManifestError as e:
        raise ManifestError(f"{e}; run `{build}`") from None
    if stage_file.is_file() and manifest["stage"] == stage_file.stem:
        from cpt.mix.plan import MixError, plan
        from cpt.mix.stage import load_stage

        try:
            current = plan(load_stage(stage_file), str(stage_file))
        except (ConfigError, MixError):
            current = None
        if current is not None and current["manifest_hash"] != manifest["manifest_hash"]:
            raise ManifestError(
                f"{path}: stale, {stage_file.relative_to(REPO)} or its shards changed since it was built; "
                f"run `{build}`"
            )
    return manifest


def deepspeed_config(cfg: TrainConfig) -> dict:
    zero: dict = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
        if cfg.deepspeed.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": cfg.data.gradient_accumulation,
        "gradient_clipping": cfg.optim.clip,
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


# what a run folder holds: the trainer's own files, and those `cpt ablate` writes beside them
RUN_FILES = frozenset(
    {
        "config.json",
        "run.json",
        "metrics.jsonl",
        "tensorboard",
        "checkpoints",
        "init",
        "train.log",
        "result.json",
    }
)
# one of them half-written when a run was killed: NAME.tmp, or cpt.io's .NAME.<random>.tmp (and .old)
UNFINISHED = re.compile(r"\.(?P<name>.+)\.[^.]+\.(?:tmp|old)|(?P<plain>.+)\.tmp")


def _is_run_file(name: str) -> bool:
    unfinished = UNFINISHED.fullmatch(name)
    if unfinished:
        name = unfinished["name"] or unfinished["plain"]
    return name in RUN_FILES


def check_output(run_dir: Path, model: str) -> None:
    """The run folder must not be, hold or lie inside the model folder: the run's config.json, logs and
    checkpoints would be written over the model's files (its config.json first)."""
    run, base = run_dir.resolve(), Path(model).resolve()
    relation = None
    if run == base:
        relation = "is the --model folder"
    elif base in run.parents:
        relation = "is inside the --model folder"
    elif run in base.parents:
        relation = "holds the --model folder"
    if relation:
        raise ConfigError(
            "--output",
            [
                f"{run_dir} {relation} {model}; the run would write its config.json, logs and checkpoints "
                "over the model: choose another --output"
            ],
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError("--output", [f"{run_dir} is a file, not a folder: choose another --output"])
    # a folder that already holds something else: the run would write config.json over theirs, and its
    # checkpoint saves remove folders under checkpoints/ (a leftover step_N.tmp, pruned old steps)
    names = [p.name for p in run_dir.iterdir()] if run_dir.is_dir() else []
    foreign = sorted(n for n in names if not _is_run_file(n))
    if foreign:
        raise ConfigError(
            "--output",
            [
                f"{run_dir} holds files a trainer run does not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): choose another --output"
            ],
        )


def check_eval_sets(cfg: TrainConfig, manifest: dict) -> None:
    """Every eval set is a finished token-shard folder of the stage's tokenizer: found now, not after
    the model has loaded and DeepSpeed has started."""
    from cpt.tokens import TokenShardError, TokenShards

    for i, s in enumerate(cfg.eval.sets):
        key = f"eval.sets[{i}].path"
        if not Path(s.path).is_dir():
            what = "is a file, not a folder" if Path(s.path).exists() else "does not exist"
            raise ConfigError(key, [f"{s.path} {what}; point it at a `run.py tokenize` output folder"])
        try:
            shards = TokenShards(s.path)
        except (TokenShardError, OSError, ValueError, KeyError) as e:
            detail = (
                str(e) if isinstance(e, TokenShardError) else f"{s.path}: not readable token shards ({e})"
            )
            raise ConfigError(key, [f"{detail}; point it at a `run.py tokenize` output"]) from None
        if not len(shards):
            raise ConfigError(key, [f"{s.path}: holds no documents"])
        theirs, ours = shards.manifest.get("tokenizer_sha256"), manifest.get("tokenizer_sha256")
        if ours and theirs != ours:
            raise ConfigError(
                key,
                [
                    f"{s.path}: written with another tokenizer (sha256 {str(theirs)[:12]}…) than the "
                    f"stage's ({ours[:12]}…); tokenize the held-out text with the stage's tokenizer"
                ],
            )


def read_run_config(args: argparse.Namespace) -> tuple[TrainConfig, dict, Path]:
    """The config with every override applied, the stage's manifest and the run folder, each checked once."""
    overrides = list(args.overrides)
    overrides += [f"mix={args.mix}"] if args.mix else []
    overrides += [f"model.path={args.model}"] if args.model else []
    overrides += [f"output={args.output}"] if args.output else []
    cfg = load_config(args.config, overrides)
    manifest = find_manifest(cfg.mix)
    run_dir = Path(cfg.output or Path("runs") / "train" / manifest["stage"])
    check_output(run_dir, cfg.model.path)
    check_eval_sets(cfg, manifest)
    return cfg, manifest, run_dir


def split_init_from(init_from: str) -> tuple[str, str | None]:
    """`RUN` or `RUN:step_N` (any spelling of the step) as (RUN, tag or None)."""
    source, sep, tag = init_from.rpartition(":")
    if sep and Path(source).is_dir():
        return source, tag
    return init_from, None


@dataclass
class Start:
    """Where the weights come from: a checkpoint of this run (`resume_tag`), one of another run
    (`init_source`, `init_tag`), or neither (the model folder)."""

    existing: list[str]  # the run folder's checkpoints
    resume_tag: str | None = None
    init_source: str | None = None
    init_tag: str | None = None
    skipped: list[str] = field(default_factory=list)  # damaged checkpoints passed over, one line each


def choose_start(args: argparse.Namespace, cfg: TrainConfig, run_dir: Path) -> Start:
    """Resume, init-from or a fresh start, with the checkpoint each names found and verified now."""
    start = Start(existing=checkpoint.checkpoint_tags(run_dir))
    if args.resume:
        if not start.existing:
            raise checkpoint.CheckpointError(f"--resume: {run_dir} has no complete checkpoint")
        start.resume_tag, start.skipped = checkpoint.choose(run_dir, args.resume)
    elif args.init_from:
        source, tag = split_init_from(args.init_from)
        if not ((Path(source) / "config.json").is_file() and checkpoint.checkpoint_tags(source)):
            raise checkpoint.CheckpointError(
                f"--init-from {source}: not a trainer run folder (it needs config.json and "
                "checkpoints/step_N/); name one as RUN or RUN:step_N, or pass a model folder as --model"
            )
        start.init_source = source
        start.init_tag, start.skipped = checkpoint.choose(source, tag)
        from trainer.export import run_config

        run_config(Path(source))  # its config.json must read before any rank starts
        check_replaceable(run_dir / "init", EXPORTED, "trainer/export.py")  # where its weights go
    return start


def process_ranks() -> tuple[int, int]:
    """This process's rank and the world size; a plain `python trainer/main.py` is one rank of one."""
    if "RANK" not in os.environ:  # no launcher
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def describe_plan(
    cfg: TrainConfig, manifest: dict, run_dir: Path, start: Start, steps: int, world: int
) -> str:
    micro, accumulation, seq_len = (
        cfg.data.micro_batch_size,
        cfg.data.gradient_accumulation,
        manifest["seq_len"],
    )
    plan = (
        f"stage {manifest['stage']} (manifest {manifest['manifest_hash'][:16]}): {steps} steps of "
        f"{micro * accumulation * world * seq_len:,} tokens ({world} ranks x {micro} x {accumulation} "
        f"accumulation x {seq_len}), mode {cfg.mode}, ZeRO {cfg.deepspeed.zero_stage}, "
        f"{'bf16' if cfg.deepspeed.bf16 else 'fp32'}, {cfg.schedule.kind} LR {cfg.optim.lr:g} -> run {run_dir}"
    )
    if start.resume_tag:
        plan += f", resuming from {checkpoint.checkpoint_dir(run_dir) / start.resume_tag}"
    elif start.init_tag:
        plan += f", weights from {checkpoint.checkpoint_dir(start.init_source) / start.init_tag}"
    return plan


def init_distributed(rank: int) -> torch.device:
    """Join the process group (NCCL on GPUs, gloo on CPU); this rank's device."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return device


def export_init_weights(source: str, tag: str, run_dir: Path, rank: int, device: torch.device) -> str | None:
    """`--init-from RUN[:step_N]`: rank 0 exports that checkpoint's weights to a model folder; None
    (on every rank) when that fails, after rank 0 has printed why."""
    from trainer.export import export

    target = run_dir / "init"
    failed = torch.zeros(1, device=device)  # on the device: NCCL broadcasts no CPU tensor
    if rank == 0:
        try:
            export(source, target, tag=tag, dtype=torch.float32)
        # ConfigError and OutputError are ValueErrors; a missing base model is an OSError. Any of them
        # must reach the other ranks through the broadcast, or they would wait for rank 0 forever
        except (checkpoint.CheckpointError, ValueError, OSError, RuntimeError) as e:
            print(f"error: --init-from {source}: {e}", file=sys.stderr)
            failed += 1
    if torch.distributed.is_initialized():  # every rank learns whether rank 0 succeeded
        torch.distributed.broadcast(failed, src=0)
    return None if failed.item() else str(target)


def write_run_files(
    cfg: TrainConfig, manifest: dict, run_dir: Path, start: Start, tokens_per_step: int
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
    }
    write_json(run_dir / "run.json", origin)


def build_engine(cfg: TrainConfig, model, stage_steps: int):
    """The DeepSpeed engine (AdamW, or DeepSpeed's CPU Adam with optimizer offload) and its LR schedule,
    which spans the whole stage even when the run stops early."""
    import deepspeed

    groups = parameter_groups(model, cfg.optim.weight_decay)
    betas = tuple(cfg.optim.betas)
    if cfg.deepspeed.offload == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.optim.lr, betas=betas, eps=cfg.optim.eps)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas, eps=cfg.optim.eps)
    engine, _, _, schedule = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        # built on the optimizer DeepSpeed keeps (its empty groups dropped); saved with every checkpoint
        lr_scheduler=lambda kept: Schedule(kept, cfg.schedule, cfg.optim.lr, stage_steps),
        config=deepspeed_config(cfg),
    )
    return engine, schedule


def resume(
    engine, schedule: Schedule, loader, ema, run_dir: Path, tag: str, manifest: dict
) -> tuple[int, int]:
    """Restore a checkpoint of this run (engine, schedule, loader position, RNG, EMA) and apply
    `schedule.on_resume`; the step and the tokens seen it was saved at."""
    state = checkpoint.load(engine, run_dir, tag)
    if state["manifest_hash"] != manifest["manifest_hash"]:
        raise RunError(
            f"{run_dir} was trained on manifest {state['manifest_hash'][:16]}, not "
            f"{manifest['manifest_hash'][:16]}: resuming would read other data (use --init-from to "
            "start a new stage from its weights)"
        )
    loader.load_state_dict(state["loader"])
    if ema is not None:
        shadow = checkpoint.load_extra(run_dir, "ema", tag)
        if shadow is None:
            raise RunError(f"ema is set but {run_dir}'s checkpoint {tag} has no EMA weights")
        ema.shadow = shadow
    step, tokens_seen = state["step"], state["tokens_seen"]
    log.info("resumed %s at step %d (%s tokens seen)", run_dir, step, f"{tokens_seen:,}")
    if schedule.on_resume(step):
        log.info(
            "schedule.on_resume=%s from step %d (LR %.3g)", schedule.config.on_resume, step, schedule.lrs[0]
        )
    return step, tokens_seen


def run_evaluation(engine, ema, cfg: TrainConfig, seq_len: int, device) -> dict:
    """Held-out loss and perplexity of every eval set, of the weights and (with `ema`) of their average."""
    results = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
    if ema is not None:
        with ema.applied(engine.module):
            averaged = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
        results.update({k.replace("eval/", "eval_ema/", 1): v for k, v in averaged.items()})
    return results


def save_checkpoint(
    engine, ema, loader, cfg: TrainConfig, manifest: dict, run_dir: Path, step: int, tokens_seen: int
) -> None:
    client = {
        "step": step,
        "tokens_seen": tokens_seen,
        "loader": loader.state_dict(),
        "manifest_hash": manifest["manifest_hash"],
    }
    extra = {"ema": ema.shadow} if ema is not None else None
    checkpoint.save(engine, run_dir, step, client, cfg.checkpoint.keep, extra)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    first = os.environ.get("RANK", "0") == "0"  # each rank checks the same; one of them says so
    try:
        return train(args, first)
    except (ConfigError, ManifestError, checkpoint.CheckpointError, OutputError, RunError) as e:
        if first:
            print(f"error: {e}", file=sys.stderr)
        return 2


def train(args: argparse.Namespace, first: bool) -> int:
    # -- config, manifest, run folder, and where the weights come from: all checked before any work -
    try:
        cfg, manifest, run_dir = read_run_config(args)
        start = choose_start(args, cfg, run_dir)
    except FileNotFoundError as e:  # an --init-from run's config.json
        raise RunError(str(e)) from None
    for line in start.skipped if first else ():
        print(f"warning: {line}: passed over, using {start.resume_tag or start.init_tag}", file=sys.stderr)
    # a folder that is not a model is found now, not after DeepSpeed has started
    if not start.init_tag and not (Path(cfg.model.path) / "config.json").is_file():
        raise ConfigError(
            "model.path", [f"{cfg.model.path}: not a Hugging Face model folder (no config.json)"]
        )

    # -- data ------------------------------------------------------------------------------------
    rank, world = process_ranks()
    seq_len = manifest["seq_len"]
    micro, accumulation = cfg.data.micro_batch_size, cfg.data.gradient_accumulation
    loader = PackedLoader(manifest, rank, world, micro, cfg.data.workers, cfg.data.pad_id)
    stage_steps = len(loader) // accumulation  # the schedule spans the stage, even when stopped early
    total_steps = min(stage_steps, cfg.max_steps) if cfg.max_steps else stage_steps
    tokens_per_step = micro * accumulation * world * seq_len
    plan = describe_plan(cfg, manifest, run_dir, start, total_steps, world)
    if args.dry_run:
        if rank == 0:
            print(json.dumps(asdict(cfg), indent=2))
            print(plan)
        return 0
    if total_steps < 1:
        raise RunError(f"the stage gives fewer sequences than one step ({plan})")
    if start.existing and not args.resume:  # the folders on disk decide, whatever `latest` says
        raise RunError(
            f"{run_dir} already holds checkpoints ({checkpoint.describe(start.existing)}): pass --resume to "
            "continue it, or another --output"
        )

    # -- model -------------------------------------------------------------------------------------
    device = init_distributed(rank)
    log.info("%s", plan)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model_path = cfg.model.path
    if start.init_tag:
        model_path = export_init_weights(start.init_source, start.init_tag, run_dir, rank, device)
        if model_path is None:  # rank 0 has said why
            return 2
    model, attention = load_model(cfg, model_path)
    log.info("model %s (%s attention): %s", model_path, attention, trainable_summary(model))
    if rank == 0:
        write_run_files(cfg, manifest, run_dir, start, tokens_per_step)

    # -- engine, and the run's state when it resumes ------------------------------------------------
    engine, schedule = build_engine(cfg, model, stage_steps)
    ema = WeightEMA(engine.module, cfg.ema) if cfg.ema else None
    step, tokens_seen = 0, 0
    if start.resume_tag:
        step, tokens_seen = resume(engine, schedule, loader, ema, run_dir, start.resume_tag, manifest)

    # -- loop ----------------------------------------------------------------------------------------
    logger = RunLogger(
        run_dir,
        enabled=rank == 0,
        tensorboard=cfg.log.tensorboard,
        wandb={"project": cfg.log.wandb_project, "config": asdict(cfg)} if cfg.log.wandb else None,
        start_step=step,
    )
    flops = flops_per_token(getattr(model, "config", None) or model.base_model.config, seq_len)
    peak = peak_flops(cfg.log.peak_tflops)
    losses_since_log = SourceLosses([src["name"] for src in manifest["sources"]], device)
    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"train {manifest['stage']}", unit="step")
    engine.train()
    tick, tick_step = time.perf_counter(), step
    micro_batches = iter(loader)

    if cfg.eval.sets and step == 0:  # the starting point: how the base model does on both domains
        logger.log(0, run_evaluation(engine, ema, cfg, seq_len, device))
        tick = time.perf_counter()

    while step < total_steps:
        lr = schedule.get_last_lr()[0]  # the LR this step uses (the schedule moves on at its end)
        for _ in range(accumulation):
            batch = next(micro_batches)
            losses, mask = token_losses(engine, batch, device)
            loss = losses.sum() / mask.sum().clamp(min=1)
            engine.backward(loss)
            engine.step()
            losses_since_log.add(losses, mask, batch["source"])
        step += 1
        tokens_seen += tokens_per_step
        if ema is not None:
            ema.update(engine.module)
        if progress is not None:
            progress.update(1)

        if step % cfg.log.every == 0 or step == total_steps:
            window = losses_since_log.reduce()
            elapsed = max(time.perf_counter() - tick, 1e-9)
            tokens_per_s = (step - tick_step) * tokens_per_step / elapsed
            record = {
                "loss": window.loss,
                "lr": lr,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "tokens_seen": tokens_seen,
                "tokens_per_s": tokens_per_s,
                "tflops_per_device": tokens_per_s * flops / world / 1e12,
            }
            if peak:
                record["mfu"] = tokens_per_s * flops / world / peak
            record.update(window.by_source)
            logger.log(step, record)
            if progress is not None:
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            tick, tick_step = time.perf_counter(), step

        paused = False
        if cfg.eval.sets and ((cfg.eval.every and step % cfg.eval.every == 0) or step == total_steps):
            logger.log(step, run_evaluation(engine, ema, cfg, seq_len, device))
            paused = True
        if step % cfg.checkpoint.every == 0 or step == total_steps:
            save_checkpoint(engine, ema, loader, cfg, manifest, run_dir, step, tokens_seen)
            paused = True
        if paused:  # evaluation and checkpoints do not count against tokens/s
            tick, tick_step = time.perf_counter(), step

    if progress is not None:
        progress.close()
    logger.close()
    if rank == 0:
        print(
            f"done: {step} steps, {tokens_seen:,} tokens; checkpoints in {checkpoint.checkpoint_dir(run_dir)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
