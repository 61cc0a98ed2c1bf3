"""Continued pre-training with DeepSpeed: `deepspeed trainer/main.py --mix stage2 [key=value ...]`.

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
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from cpt.config import ConfigError
from cpt.data import PackedLoader
from cpt.io import OutputError, check_replaceable
from cpt.manifest import ManifestError, read_stage_manifest
from pipelines.common import write_json
from trainer import checkpoint
from trainer.config import TrainConfig, load_config
from trainer.evaluate import evaluate, token_losses
from trainer.export import EXPORTED
from trainer.metrics import RunLogger
from trainer.model import (
    WeightEMA,
    flops_per_token,
    load_model,
    parameter_groups,
    peak_flops,
    trainable_summary,
)
from trainer.schedule import lr_multiplier

log = logging.getLogger("cpt.trainer")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "trainer" / "configs" / "cpt.yaml"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deepspeed trainer/main.py",
        description="Continued pre-training of a Hugging Face Llama-family model on a stage manifest, with "
        "DeepSpeed ZeRO, bf16, the CPT recipe, held-out perplexity of the old and new domains, and exact "
        "resume.",
        epilog="Example: deepspeed --num_gpus 2 trainer/main.py --mix stage2 --model runs/demo/model "
        "optim.lr=1e-4 checkpoint.every=50",
    )
    parser.add_argument("--mix", help="a stage name (runs/mixes/NAME/manifest.json) or a manifest path")
    parser.add_argument(
        "--config", default=str(DEFAULT_CONFIG), help="trainer YAML (trainer/configs/cpt.yaml)"
    )
    parser.add_argument("--model", help="Hugging Face model folder (model.path)")
    parser.add_argument("--output", help="run folder (default runs/train/<stage>)")
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
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=1e-4"
    )
    args = parser.parse_args(argv)
    if args.resume is not None and "=" in args.resume:  # `--resume key=value`: an override, not a step
        args.overrides.insert(0, args.resume)
        args.resume = checkpoint.LATEST
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
    foreign = sorted(n for n in names if n.removesuffix(".tmp") not in RUN_FILES)
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


def split_init_from(init_from: str) -> tuple[str, str | None]:
    """`RUN` or `RUN:step_N` (any spelling of the step) as (RUN, tag or None)."""
    source, sep, tag = init_from.rpartition(":")
    if sep and Path(source).is_dir():
        return source, tag
    return init_from, None


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    overrides = list(args.overrides)
    overrides += [f"mix={args.mix}"] if args.mix else []
    overrides += [f"model.path={args.model}"] if args.model else []
    overrides += [f"output={args.output}"] if args.output else []
    first = os.environ.get("RANK", "0") == "0"  # each rank checks the same; one of them says so

    def fail(message: str) -> int:
        if first:
            print(f"error: {message}", file=sys.stderr)
        return 2

    try:
        cfg = load_config(args.config, overrides)
        manifest = find_manifest(cfg.mix)
        run_dir = Path(cfg.output or Path("runs") / "train" / manifest["stage"])
        check_output(run_dir, cfg.model.path)
        check_eval_sets(cfg, manifest)
    except (ConfigError, ManifestError) as e:
        return fail(str(e))
    seq_len = manifest["seq_len"]

    # -- where the weights come from: a checkpoint of this run, of another, or the model folder --------
    existing = checkpoint.checkpoint_tags(run_dir)
    resume_tag = init_source = init_tag = None
    try:
        if args.resume and not existing:
            raise checkpoint.CheckpointError(f"--resume: {run_dir} has no complete checkpoint")
        if args.resume:
            resume_tag, skipped = checkpoint.choose(run_dir, args.resume)
        elif args.init_from:
            init_source, init_tag = split_init_from(args.init_from)
            is_run = (Path(init_source) / "config.json").is_file() and checkpoint.checkpoint_tags(init_source)
            if not is_run:
                raise checkpoint.CheckpointError(
                    f"--init-from {init_source}: not a trainer run folder (it needs config.json and "
                    "checkpoints/step_N/); name one as RUN or RUN:step_N, or pass a model folder as --model"
                )
            init_tag, skipped = checkpoint.choose(init_source, init_tag)
            from trainer.export import run_config

            run_config(Path(init_source))  # its config.json must read before any rank starts
            check_replaceable(run_dir / "init", EXPORTED, "trainer/export.py")  # where its weights go
        else:
            skipped = []
    except (checkpoint.CheckpointError, OutputError, ConfigError, FileNotFoundError) as e:
        return fail(str(e))
    for line in skipped if first else ():
        print(f"warning: {line}: passed over, using {resume_tag or init_tag}", file=sys.stderr)
    # a folder that is not a model is found now, not after DeepSpeed has started
    if not init_tag and not (Path(cfg.model.path) / "config.json").is_file():
        return fail(f"model.path: {cfg.model.path}: not a Hugging Face model folder (no config.json)")

    # -- data ------------------------------------------------------------------------------------
    if "RANK" not in os.environ:  # plain `python trainer/main.py`: one process, no launcher
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    micro, accumulation = cfg.data.micro_batch_size, cfg.data.gradient_accumulation
    loader = PackedLoader(manifest, rank, world, micro, cfg.data.workers, cfg.data.pad_id)
    stage_steps = len(loader) // accumulation  # the schedule spans the stage, even when stopped early
    total_steps = min(stage_steps, cfg.max_steps) if cfg.max_steps else stage_steps
    tokens_per_step = micro * accumulation * world * seq_len
    plan = (
        f"stage {manifest['stage']} (manifest {manifest['manifest_hash'][:16]}): {total_steps} steps of "
        f"{tokens_per_step:,} tokens ({world} ranks x {micro} x {accumulation} accumulation x {seq_len}), "
        f"mode {cfg.mode}, ZeRO {cfg.deepspeed.zero_stage}, {'bf16' if cfg.deepspeed.bf16 else 'fp32'}, "
        f"{cfg.schedule.kind} LR {cfg.optim.lr:g} -> run {run_dir}"
    )
    if resume_tag:
        plan += f", resuming from {checkpoint.checkpoint_dir(run_dir) / resume_tag}"
    elif init_tag:
        plan += f", weights from {checkpoint.checkpoint_dir(init_source) / init_tag}"
    if args.dry_run:
        if rank == 0:
            print(json.dumps(asdict(cfg), indent=2))
            print(plan)
        return 0
    if total_steps < 1:
        return fail(f"the stage gives fewer sequences than one step ({plan})")
    if existing and not args.resume:  # the folders on disk decide, whatever `latest` says
        return fail(
            f"{run_dir} already holds checkpoints ({checkpoint.describe(existing)}): pass --resume to "
            "continue it, or another --output"
        )

    # -- distributed set-up --------------------------------------------------------------------------
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    log.info("%s", plan)

    # -- model -------------------------------------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model_path = (
        export_init_weights(init_source, init_tag, run_dir, rank, device) if init_tag else cfg.model.path
    )
    if model_path is None:
        return 2
    model, attention = load_model(cfg, model_path)
    log.info("model %s (%s attention): %s", model_path, attention, trainable_summary(model))
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", asdict(cfg))
        if not args.resume:  # where the weights came from, so a report can chain stages
            source = None
            if init_tag:  # RUN:step_N, the run folder made absolute: found from any folder
                source = f"{Path(init_source).resolve()}:{init_tag}"
            origin = {
                "stage": manifest["stage"],
                "manifest_hash": manifest["manifest_hash"],
                "init_from": source,
                "model": str(cfg.model.path),
                "tokens_per_step": tokens_per_step,
            }
            write_json(run_dir / "run.json", origin)

    # -- engine --------------------------------------------------------------------------------------
    groups = parameter_groups(model, cfg.optim.weight_decay)
    if cfg.deepspeed.offload == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)
    else:
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps
        )
    s = cfg.schedule
    restart = [0]  # the step the schedule starts from: 0, or the resumed step (schedule.on_resume)

    def schedule(step: int) -> float:
        start = restart[0]
        if start and s.on_resume == "constant":
            step, start = start, 0  # held at the LR of the step the run resumed at
        # from step 0, or with on_resume=rewarm a new warmup and decay over the steps after `start`
        ratio = s.min_lr / cfg.optim.lr
        return lr_multiplier(step - start, stage_steps - start, s.kind, s.warmup_ratio, ratio, s.decay_ratio)

    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        config=deepspeed_config(cfg),
    )

    ema = WeightEMA(engine.module, cfg.ema) if cfg.ema else None
    step, tokens_seen = 0, 0
    if resume_tag:
        try:
            state = checkpoint.load(engine, run_dir, resume_tag)
        except checkpoint.CheckpointError as e:
            return fail(str(e))
        if state["manifest_hash"] != manifest["manifest_hash"]:
            return fail(
                f"{run_dir} was trained on manifest {state['manifest_hash'][:16]}, not "
                f"{manifest['manifest_hash'][:16]}: resuming would read other data (use --init-from to "
                "start a new stage from its weights)"
            )
        loader.load_state_dict(state["loader"])
        if ema is not None:
            shadow = checkpoint.load_extra(run_dir, "ema", resume_tag)
            if shadow is None:
                return fail(f"ema is set but {run_dir}'s checkpoint {resume_tag} has no EMA weights")
            ema.shadow = shadow
        step, tokens_seen = state["step"], state["tokens_seen"]
        log.info("resumed %s at step %d (%s tokens seen)", run_dir, step, f"{tokens_seen:,}")
        if s.on_resume != "continue" and step:  # the restored scheduler holds the old schedule's LR
            restart[0] = step
            last = [base * schedule(step) for base in scheduler.base_lrs]
            for group, lr in zip(scheduler.optimizer.param_groups, last, strict=True):
                group["lr"] = lr
            scheduler._last_lr = last
            log.info("schedule.on_resume=%s from step %d (LR %.3g)", s.on_resume, step, last[0])

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
    names = [src["name"] for src in manifest["sources"]]
    source_loss = torch.zeros(len(names), dtype=torch.float64, device=device)
    source_tokens = torch.zeros(len(names), dtype=torch.float64, device=device)
    window_loss = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, tokens
    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"train {manifest['stage']}", unit="step")
    engine.train()
    tick, tick_step = time.perf_counter(), step
    micro_batches = iter(loader)

    def save_checkpoint() -> None:
        client = {
            "step": step,
            "tokens_seen": tokens_seen,
            "loader": loader.state_dict(),
            "manifest_hash": manifest["manifest_hash"],
        }
        extra = {"ema": ema.shadow} if ema is not None else None
        checkpoint.save(engine, run_dir, step, client, cfg.checkpoint.keep, extra)

    def run_evaluation() -> dict:
        results = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
        if ema is not None:
            with ema.applied(engine.module):
                averaged = evaluate(
                    engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id
                )
            results.update({k.replace("eval/", "eval_ema/", 1): v for k, v in averaged.items()})
        return results

    if cfg.eval.sets and step == 0:  # the starting point: how the base model does on both domains
        logger.log(0, run_evaluation())
        tick = time.perf_counter()

    while step < total_steps:
        lr = scheduler.get_last_lr()[0]  # the LR this step uses (the scheduler moves on at its end)
        for _ in range(accumulation):
            batch = next(micro_batches)
            losses, mask = token_losses(engine, batch, device)
            loss = losses.sum() / mask.sum().clamp(min=1)
            engine.backward(loss)
            engine.step()
            with torch.no_grad():
                per_sequence, counted = losses.sum(dim=1).double(), mask.sum(dim=1).double()
                source = batch["source"].to(device)
                source_loss.index_add_(0, source, per_sequence)
                source_tokens.index_add_(0, source, counted)
                window_loss += torch.stack([per_sequence.sum(), counted.sum()])
        step += 1
        tokens_seen += tokens_per_step
        if ema is not None:
            ema.update(engine.module)
        if progress is not None:
            progress.update(1)

        if step % cfg.log.every == 0 or step == total_steps:
            sums = torch.cat([window_loss, source_loss, source_tokens])
            torch.distributed.all_reduce(sums)
            elapsed = max(time.perf_counter() - tick, 1e-9)
            tokens_per_s = (step - tick_step) * tokens_per_step / elapsed
            record = {
                "loss": (sums[0] / sums[1].clamp(min=1)).item(),
                "lr": lr,
                "grad_norm": float(engine.get_global_grad_norm() or 0.0),
                "tokens_seen": tokens_seen,
                "tokens_per_s": tokens_per_s,
                "tflops_per_device": tokens_per_s * flops / world / 1e12,
            }
            if peak:
                record["mfu"] = tokens_per_s * flops / world / peak
            k = len(names)
            for i, name in enumerate(names):
                if sums[2 + k + i] > 0:
                    record[f"loss/{name}"] = (sums[2 + i] / sums[2 + k + i]).item()
            logger.log(step, record)
            if progress is not None:
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            window_loss.zero_(), source_loss.zero_(), source_tokens.zero_()
            tick, tick_step = time.perf_counter(), step

        paused = False
        if cfg.eval.sets and ((cfg.eval.every and step % cfg.eval.every == 0) or step == total_steps):
            logger.log(step, run_evaluation())
            paused = True
        if step % cfg.checkpoint.every == 0 or step == total_steps:
            save_checkpoint()
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
