"""Continued pre-training with DeepSpeed: `deepspeed trainer/main.py --mix stage2 [--set key=value ...]`.

Reads top to bottom: `set_up` (every check before any work, in `trainer.preflight`; the process group,
model and engine, in `trainer.engine`; a resumed run's state) → `train` (the loop: `train_step`, then
logging, evaluation and checkpoints, each of which says when it is due; a stop signal saves at the next
step boundary and exits 75) → the last line. On CPU it runs on gloo (`deepspeed --num_gpus 2` starts
two CPU ranks); on GPUs it runs unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from cpt.config import ConfigError
from cpt.data import PackedLoader
from cpt.data.loader import IGNORE_INDEX, cu_seqlens
from cpt.io import (
    CustomCodeError,
    JsonFileError,
    OutputError,
    exit_on_disk_fault,
    output_lock,
    refuse_custom_code,
)
from cpt.manifest import ManifestError
from trainer import checkpoint
from trainer.checkpoint import Checkpointer
from trainer.config import TrainConfig
from trainer.engine import build_engine, init_distributed, lr_scale, model_for
from trainer.evaluation import Evaluator
from trainer.evaluation.needle import NeedleError
from trainer.metrics import RunLogger, SourceLosses, Throughput
from trainer.model import WeightEMA, peak_flops, token_losses, trainable_summary
from trainer.preflight import (
    AUTO,
    REPO,
    RunError,
    StepPlan,
    check_startable,
    choose_start,
    describe_plan,
    plan_steps,
    process_ranks,
    read_run_config,
)
from trainer.run_folder import write_run_files
from trainer.schedule import segment_of

log = logging.getLogger("cpt.trainer")
DEFAULT_CONFIG = REPO / "trainer" / "configs" / "cpt.yaml"
STOPPED = 75  # exit status of a run stopped by a signal after its checkpoint (EX_TEMPFAIL: run it again)


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
    parser.add_argument(
        "--resume",
        nargs="?",
        const=checkpoint.LATEST,
        metavar="STEP",
        help="continue this run from its latest complete checkpoint, or from the one named (step_8, "
        "step_00000008 or 8); a damaged latest one is passed over, with a warning. `--resume auto`: continue "
        "when the run folder holds a checkpoint, else start (from --model or --init-from), so one command "
        "line serves a job that is requeued",
    )
    parser.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start a new stage from another run's weights (its folder, or folder:step_N): fresh optimizer, "
        "new warmup; the model folder is that run's",
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
    if args.resume not in (None, AUTO) and args.init_from:
        parser.error("--init-from starts a new run: it goes with --resume auto only (or no --resume)")
    if args.resume is not None and "=" in args.resume:  # `--resume key=value`: an override, not a step
        args.positional_overrides.insert(0, args.resume)
        args.resume = checkpoint.LATEST
    args.overrides = [*args.positional_overrides, *args.overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    first = os.environ.get("RANK", "0") == "0"  # each rank checks the same; one of them says so
    try:
        with contextlib.ExitStack() as held:  # the run folder's lock, for as long as the run writes it
            return train(args, first, held)
    except (
        ConfigError, ManifestError, checkpoint.CheckpointError, OutputError, RunError, CustomCodeError, JsonFileError
    ) as e:  # fmt: skip
        if first:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the run folder's disk full or read-only: one line, not a traceback
        return exit_on_disk_fault(e, say=first)


class StopSignals:
    """Signals that ask the run to stop: the first is noted and acted on at the next step boundary (a
    checkpoint, then exit status STOPPED); a second of the same has its usual effect at once."""

    def __init__(self, names: list[str]):
        self.received: str | None = None
        self._pid = os.getpid()
        self._before = {getattr(signal, n): signal.signal(getattr(signal, n), self._note) for n in names}

    def _note(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # a loader worker, forked from its rank, inherits this handler: Slurm signals every process of
            # the step, and the worker leaves the stop to its rank (it must live to serve the last batch)
            return
        if self.received is None:
            self.received = signal.Signals(signum).name
            return
        before = self._before.get(signum)
        if callable(before):
            before(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


@dataclass
class StepTotals:
    """What one optimizer step's micro-batches hold, summed over ranks: the target tokens its loss is
    averaged over, the sum of squared piece lengths (for attention FLOPs under document masking), and
    whether any rank was asked to stop."""

    targets: float
    piece_squares: float
    stop: bool


def step_totals(batches: list[dict], stop: bool, device) -> StepTotals:
    """One all-reduce a step, before its forward passes: the loss of every micro-batch needs the whole
    step's token count, and every rank must stop at the same step."""
    targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    squares = sum(float((np.diff(cu_seqlens(b["position_ids"].numpy())) ** 2.0).sum()) for b in batches)
    sums = torch.tensor([targets, squares, float(stop)], dtype=torch.float64, device=device)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    targets, squares, stops = sums.tolist()
    return StepTotals(targets, squares, stops > 0)


def non_finite(step_loss: torch.Tensor, grad_norm, device) -> str:
    """'loss' or 'gradient norm' when either is NaN or infinite on any rank (one all-reduce), else ''.
    Training on would write NaN weights into every later checkpoint."""
    flags = torch.tensor(
        [
            float(not torch.isfinite(step_loss)),
            float(grad_norm is not None and not math.isfinite(float(grad_norm))),
        ],
        dtype=torch.float64,
        device=device,
    )
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    loss_bad, norm_bad = flags.tolist()
    return "loss" if loss_bad else "gradient norm" if norm_bad else ""


@dataclass
class Run:
    """A run set up and ready for its first step: what the loop reads and the parts it drives."""

    cfg: TrainConfig
    manifest: dict
    run_dir: Path
    steps: StepPlan
    rank: int
    world: int
    device: torch.device
    loader: PackedLoader
    signals: StopSignals
    engine: object
    schedule: object
    ema: WeightEMA | None
    evaluator: Evaluator
    checkpointer: Checkpointer
    model_config: object
    step: int = 0  # where it starts: 0, or the step of the checkpoint it resumes
    tokens_seen: int = 0


def set_up(args: argparse.Namespace, first: bool, held: contextlib.ExitStack) -> Run | None:
    """Everything before the first step, in the order that finds a problem before any work: config,
    manifest, run folder and the weights' source checked; the run folder locked; the model and engine
    built; a resumed run's state restored. None after --dry-run."""
    try:
        cfg, manifest, run_dir = read_run_config(args)
        refuse_custom_code(cfg.model.path)  # before anything of the model folder is read by transformers
        start = choose_start(args, cfg, run_dir)
    except FileNotFoundError as e:  # an --init-from run's config.json
        raise RunError(str(e)) from None
    for line in start.skipped if first else ():
        print(f"warning: {line}: passed over, using {start.resume_tag or start.init_tag}", file=sys.stderr)
    rank, world = process_ranks()
    # `auto` made a number now, before anything reads it: config.json records the stage the run used
    cfg.deepspeed.zero_stage = cfg.deepspeed.stage_for(world)
    steps = plan_steps(cfg, manifest, world)
    loader = PackedLoader(
        manifest, rank, world, cfg.data.micro_batch_size, cfg.data.workers, cfg.data.pad_id, steps.sequence_lengths()
    )  # fmt: skip
    plan = describe_plan(
        cfg, manifest, run_dir, start, steps.total_steps, world, steps.segments, steps.annealed
    )
    if args.dry_run:
        if rank == 0:
            print(json.dumps(asdict(cfg), indent=2))
            print(plan)
        return None
    if rank == 0:  # one writer per run folder: a second run into it is refused here, before any work
        held.enter_context(output_lock(run_dir, "trainer/main.py"))
    check_startable(run_dir, start, steps.total_steps, plan)
    try:
        evaluator = Evaluator(cfg, manifest["seq_len"], steps.total_steps)
    except NeedleError as e:
        raise RunError(str(e)) from None
    signals = StopSignals(cfg.checkpoint.signals)  # from here on, a stop request waits for a step boundary

    device = init_distributed(rank)
    log.info("%s", plan)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model, attention, origin = model_for(cfg, start, rank)
    log.info("model %s (%s attention): %s", origin, attention, trainable_summary(model))
    if rank == 0:
        head = steps.segments[0]
        write_run_files(cfg, manifest, run_dir, start, head.seq_len * head.batch, steps.shape)
    engine, schedule = build_engine(
        cfg, model, steps.stage_steps, steps.annealed, lr_scale(cfg, steps.segments)
    )
    ema = WeightEMA(engine.module, cfg.ema) if cfg.ema else None
    checkpointer = Checkpointer(engine, ema, run_dir, manifest, cfg, steps.segments, steps.total_steps)
    model_config = getattr(model, "config", None) or model.base_model.config
    run = Run(
        cfg, manifest, run_dir, steps, rank, world, device, loader, signals, engine, schedule, ema, evaluator,
        checkpointer, model_config,
    )  # fmt: skip
    if start.resume_tag:
        run.step, run.tokens_seen = checkpointer.restore(loader, start.resume_tag)
        log.info("resumed %s at step %d (%s tokens seen)", run_dir, run.step, f"{run.tokens_seen:,}")
    return run


def train(args: argparse.Namespace, first: bool, held: contextlib.ExitStack) -> int:
    run = set_up(args, first, held)
    if run is None:  # --dry-run
        return 0
    cfg, engine, steps, device = run.cfg, run.engine, run.steps, run.device
    step, tokens_seen, last_eval = run.step, run.tokens_seen, {}
    shown = held.enter_context(contextlib.ExitStack())  # the bar and the logs: closed before the last line
    logger = shown.enter_context(contextlib.closing(RunLogger(
        run.run_dir, enabled=run.rank == 0, tensorboard=cfg.log.tensorboard, start_step=step,
        wandb={"project": cfg.log.wandb_project, "config": asdict(cfg)} if cfg.log.wandb else None,
    )))  # fmt: skip
    progress = shown.enter_context(progress_bar(run))
    guard = NonFiniteGuard(cfg, progress)
    speed = Throughput(run.model_config, steps.segments, run.world, peak_flops(cfg.log.peak_tflops), step)
    losses_since_log = SourceLosses([src["name"] for src in run.manifest["sources"]], device)
    engine.train()
    micro_batches = iter(run.loader)
    if run.evaluator.enabled and step == 0:  # the starting point: how the base model does on both domains
        logger.log(0, run.evaluator.run(engine, run.ema, device))
    speed.restart(step)

    while step < steps.total_steps:
        lr = run.schedule.get_last_lr()[0]  # the LR this step uses (the schedule moves on at its end)
        position = run.loader.state_dict()  # the data before this step: what a stop here saves
        seg = segment_of(steps.segments, step)
        accumulation = seg.batch // (cfg.data.micro_batch_size * run.world)
        if accumulation != engine.gradient_accumulation_steps():  # a batch ramp's boundary
            engine.set_train_batch_size(seg.batch)
        batches = [next(micro_batches) for _ in range(accumulation)]
        totals = step_totals(batches, run.signals.received is not None, device)
        if totals.stop:
            break
        step_loss = train_step(
            engine, batches, run.world / max(totals.targets, 1.0), losses_since_log, device
        )
        step += 1
        failed = guard.check(engine, run.schedule, step_loss, step, run.checkpointer.saved_step, device)
        if (
            failed
        ):  # the step has already moved the weights: nothing of it is saved, the last checkpoint stays
            shown.close()
            if run.rank == 0:
                print(failed, file=sys.stderr)
            return 1
        tokens_seen += seg.batch * seg.seq_len
        speed.add(totals.piece_squares)
        if run.ema is not None:
            run.ema.update(engine.module)
        progress.update(1)

        if step % cfg.log.every == 0 or step == steps.total_steps:
            ramp = {"seq_len": seg.seq_len, "batch_sequences": seg.batch} if steps.ramped else {}
            window = losses_since_log.reduce()
            record = log_record(engine, window, lr, tokens_seen, speed.figures(step, seg.seq_len))
            logger.log(step, {**record, **ramp, **window.by_source})
            progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            speed.restart(step)
        paused = False
        if run.evaluator.due(step):
            last_eval = run.evaluator.run(engine, run.ema, device)
            logger.log(step, last_eval)
            paused = True
        if run.checkpointer.due(step):
            run.checkpointer.save(step, tokens_seen, run.loader.state_dict())
            paused = True
        if paused:  # evaluation and checkpoints do not count against tokens/s (nor the documents' FLOPs
            speed.restart(step)  # of the steps before them, which the window no longer counts)

    stopped = step < steps.total_steps
    if (
        stopped and run.checkpointer.saved_step != step
    ):  # asked to stop: the steps since the last checkpoint are kept
        run.checkpointer.save(step, tokens_seen, position)
    shown.close()
    return last_line(run, step, tokens_seen, last_eval, stopped)


def train_step(
    engine, batches: list[dict], scale: float, losses_since_log: SourceLosses, device
) -> torch.Tensor:
    """One optimizer step over its micro-batches: each one's forward and backward, DeepSpeed's update at the
    last; returns the step's summed loss. `scale` makes the step's loss the mean over all its target
    tokens, on every rank and micro-batch: DeepSpeed averages gradients over ranks (hence x world) and would
    divide by the accumulation steps (not here)."""
    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    for i, batch in enumerate(batches):
        # the step's boundary is its last micro-batch, said outright: DeepSpeed's own count of micro-steps
        # modulo the accumulation would misplace it once a ramp has changed the accumulation
        engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
        losses, mask = token_losses(engine, batch, device)
        engine.backward(losses.sum() * scale, scale_wrt_gas=False)
        engine.step()
        losses_since_log.add(losses, mask, batch["source"])
        step_loss += losses.detach().sum().double()
    return step_loss


def progress_bar(run: Run):
    """The bar of the run's steps; rank 0's only is shown."""
    from tqdm import tqdm

    desc = f"train {run.manifest['stage']}"
    return tqdm(total=run.steps.total_steps, initial=run.step, desc=desc, unit="step", disable=run.rank != 0)


class NonFiniteGuard:
    """`optim.nan_policy` applied to each step: a step whose loss or gradient norm is NaN or infinite on
    any rank stops the run (`stop`), or (`skip`) is passed over when DeepSpeed's overflow check discarded
    its update, up to `optim.max_skips` in a row; the schedule moves on as after any step, so the LR of a
    step does not depend on what was skipped before it."""

    def __init__(self, cfg: TrainConfig, progress):
        self.cfg, self.progress, self.in_a_row = cfg, progress, 0

    def check(self, engine, schedule, step_loss: torch.Tensor, step: int, saved_step: int, device) -> str:
        """'' to go on; else the line the run stops with."""
        bad = non_finite(step_loss, engine.get_global_grad_norm(), device)
        # DeepSpeed's decision is the same on every rank: the norm is global
        skipped = bool(bad) and self.cfg.optim.nan_policy == "skip" and not engine.was_step_applied()
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if skipped and self.in_a_row <= self.cfg.optim.max_skips:
            schedule.step()
            if not self.progress.disable:  # a line of its own, above the progress bar
                self.progress.write(f"warning: step {step} skipped: its {bad} is not finite", file=sys.stderr)
            return ""
        return failure(self.cfg, bad, skipped, self.in_a_row, step, saved_step) if bad else ""


def log_record(engine, window, lr: float, tokens_seen: int, speed: dict) -> dict:
    """A log line's figures: the training loss since the last line, the LR, the gradient norm, the tokens
    seen and the throughput."""
    norm = engine.get_global_grad_norm()  # None where DeepSpeed did not compute one: logged so
    record = {"loss": window.loss, "lr": lr, "grad_norm": None if norm is None else float(norm)}
    record.update({"tokens_seen": tokens_seen, **speed})
    if engine.skipped_steps:  # steps discarded for non-finite gradients, in all (nan_policy skip)
        record["skipped_steps"] = engine.skipped_steps
    return record


def failure(cfg: TrainConfig, bad: str, skipped: bool, in_a_row: int, step: int, saved_step: int) -> str:
    """The line of a run stopped by a non-finite loss or gradient norm."""
    kept = f"checkpoint step_{saved_step:08d} is kept" if saved_step else "no checkpoint was written"
    why = (
        f"non-finite in {in_a_row} steps in a row (optim.max_skips {cfg.optim.max_skips})"
        if skipped
        else "applied by DeepSpeed all the same (its overflow check is off here: use ZeRO 1-3 or bf16)"
        if cfg.optim.nan_policy == "skip"
        else "became non-finite"
    )
    return (
        f"error: the {bad} {why} at step {step}: the run stopped without saving ({kept}); "
        "lower optim.lr or look at this step's data, then run again (with --resume auto)"
    )


def last_line(run: Run, step: int, tokens_seen: int, last_eval: dict, stopped: bool) -> int:
    """The run's exit status, and rank 0's line of how it ended."""
    if stopped:
        if run.rank == 0:
            kept = f"checkpoint step_{step:08d}" if step > run.step else "nothing trained yet"
            print(
                f"stopped by {run.signals.received or 'another rank'} at step {step} ({kept}); run the same "
                "command with --resume auto to continue",
                file=sys.stderr,
            )
        return STOPPED
    if run.rank == 0:
        skipped = run.engine.skipped_steps
        skips = f" ({skipped} skipped: non-finite)" if skipped else ""
        ppl = [
            f"{k.split('/')[1]} {v:.2f}"
            for k, v in last_eval.items()
            if k.startswith("eval/") and k.endswith("/ppl")
        ]
        held_out = f"; held-out perplexity {', '.join(ppl)}" if ppl else ""
        print(
            f"done: {step} steps{skips}, {tokens_seen:,} tokens{held_out}; "
            f"checkpoints in {checkpoint.checkpoint_dir(run.run_dir)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
