"""Continued pre-training with DeepSpeed: `deepspeed trainer/main.py --mix stage2 [--set key=value ...]`.

Reads top to bottom: config → manifest → model (checked against the shards' tokenizer) → data → engine
→ (resume) → loop (forward, backward, step, log, evaluate, checkpoint; a stop signal saves at the next
step boundary and exits 75) → final checkpoint. On CPU it runs on gloo (`deepspeed --num_gpus 2`
starts two CPU ranks); on GPUs it runs unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
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
from cpt.data.loader import IGNORE_INDEX, cu_seqlens
from cpt.io import (
    LOCK_NAME,
    CustomCodeError,
    JsonFileError,
    OutputError,
    exit_on_disk_fault,
    output_lock,
    refuse_custom_code,
    write_json,
)
from cpt.manifest import ManifestError, read_stage_manifest
from trainer import checkpoint
from trainer.config import RopeConfig, TrainConfig, load_config
from trainer.evaluate import evaluate, token_losses
from trainer.metrics import RunLogger, SourceLosses
from trainer.model import (
    WeightEMA,
    flops_per_token,
    load_model,
    parameter_groups,
    peak_flops,
    pick_attention,
    prepare_model,
    trainable_summary,
)
from trainer.schedule import Schedule, Segment, describe_segments, plan_sequences, segment_of, step_plan

log = logging.getLogger("cpt.trainer")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO / "trainer" / "configs" / "cpt.yaml"
AUTO = "auto"  # --resume auto: resume when there is a checkpoint, else start
STOPPED = 75  # exit status of a run stopped by a signal after its checkpoint (EX_TEMPFAIL: run it again)


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
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": cfg.data.gradient_accumulation,
        "gradient_clipping": cfg.optim.clip,
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.bf16 and cfg.deepspeed.zero_stage >= 2:
        # the micro-steps' gradients summed in fp32, not bf16 (8 bits of mantissa: a sum of 8 loses the
        # small ones). At ZeRO 2-3 DeepSpeed keeps its checkpoint layout; at ZeRO 1 it would switch to its
        # BF16 optimizer, whose checkpoints its own zero_to_fp32 (what export reads) cannot read, and
        # without ZeRO it offers no fp32 sums: both sum in bf16
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


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
    return name in RUN_FILES or name == LOCK_NAME  # a killed run's lock file


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
    # checkpoint saves remove folders under checkpoints/ (a leftover step_N.<pid>.tmp, pruned old steps)
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
        if s.seq_len is not None and not 1 < s.seq_len <= manifest["seq_len"]:
            raise ConfigError(
                f"eval.sets[{i}].seq_len", [f"{s.seq_len}: within (1, the stage's {manifest['seq_len']}]"]
            )
    needle = cfg.eval.needle
    if needle.set:
        problems = []
        if needle.set not in [s.name for s in cfg.eval.sets]:
            problems.append(f"set {needle.set!r} is not one of eval.sets' names")
        if any(not 0 < n <= manifest["seq_len"] for n in needle.lengths):
            problems.append(
                f"lengths {needle.lengths}: each within (0, the stage's seq_len {manifest['seq_len']}]"
            )
        if not needle.depths or any(not 0 <= d <= 100 for d in needle.depths) or needle.trials < 1:
            problems.append("depths: percentages within [0, 100]; trials >= 1")
        if problems:
            raise ConfigError("eval.needle", problems)


def check_model(model_dir: str, manifest: dict) -> None:
    """The model folder is one, holds the tokenizer the stage's shards were made with, and has an
    embedding row for every id that tokenizer gives: found now, not as an IndexError (a device assert on
    a GPU) at the first step, or never (another tokenizer of the same size trains on the wrong rows)."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise ConfigError("model.path", [f"{model_dir}: not a Hugging Face model folder (no config.json)"])
    ours = manifest.get("tokenizer_sha256")
    if not ours:  # a manifest of the releases before tokenizer hashes: nothing to compare
        return
    tokenizer = folder / "tokenizer.json"
    if not tokenizer.is_file():
        raise ConfigError(
            "model.path",
            [
                f"{model_dir} has no tokenizer.json, so nothing shows it reads the stage's shards (tokenizer "
                f"sha256 {ours[:12]}…); put the tokenizer they were made with beside the weights (`cpt-tok "
                "init-embeddings` writes both)"
            ],
        )
    from cpt.tokens import tokenizer_hash

    theirs = tokenizer_hash(tokenizer)
    if theirs != ours:
        raise ConfigError(
            "model.path",
            [
                f"{model_dir}: its tokenizer (sha256 {theirs[:12]}…) is not the one the stage's shards were "
                f"made with ({ours[:12]}…); tokenize with the model's tokenizer, or extend the model to the "
                "shards' tokenizer with `cpt-tok init-embeddings`"
            ],
        )
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tokenizer)).get_vocab_size(with_added_tokens=True)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    rows = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    if rows is not None and ids > int(rows):
        raise ConfigError(
            "model.path",
            [
                f"{model_dir}: the tokenizer gives token ids up to {ids - 1} but the model has {rows} "
                "embedding rows; resize it for the tokenizer with `cpt-tok init-embeddings`"
            ],
        )


def read_run_config(args: argparse.Namespace) -> tuple[TrainConfig, dict, Path]:
    """The config with every override applied, the stage's manifest and the run folder, each checked once.

    With --init-from, the model folder is the source run's (its architecture and tokenizer), whatever
    model.path says."""
    overrides = list(args.overrides)
    overrides += [f"mix={args.mix}"] if args.mix else []
    overrides += [f"model.path={args.model}"] if args.model else []
    overrides += [f"output={args.output}"] if args.output else []
    if args.init_from:
        from trainer.export import base_model, run_config

        source = Path(split_init_from(args.init_from)[0])
        if not ((source / "config.json").is_file() and checkpoint.checkpoint_tags(source)):
            raise checkpoint.CheckpointError(
                f"--init-from {source}: not a trainer run folder (it needs config.json and "
                "checkpoints/step_N/); name one as RUN or RUN:step_N, or pass a model folder as --model"
            )
        source_cfg = run_config(source)
        base = base_model(source, source_cfg).resolve()  # absolute: found from any folder
        overrides += [f"model.path={json.dumps(str(base))}"]
    cfg = load_config(args.config, overrides)
    if args.init_from:  # the RoPE the source trained with, where this config does not change it
        cfg.model.rope = inherit_rope(source_cfg.model.rope, cfg.model.rope)
    manifest = find_manifest(cfg.mix)
    run_dir = Path(cfg.output or Path("runs") / "train" / manifest["stage"])
    check_output(run_dir, cfg.model.path)
    check_model(cfg.model.path, manifest)
    if args.resume is not None and checkpoint.checkpoint_tags(run_dir):
        check_resumed_rope(cfg, run_dir)
    check_context(cfg, manifest)
    check_eval_sets(cfg, manifest)
    if cfg.eval.benchmarks.tasks:
        from trainer import bench

        try:
            bench.check(cfg.eval.benchmarks)
        except bench.BenchError as e:
            raise ConfigError("eval.benchmarks", [str(e)]) from None
    return cfg, manifest, run_dir


def check_context(cfg: TrainConfig, manifest: dict) -> None:
    """`model.rope` is one transformers accepts, and the stage's sequences fit the positions the model
    declares (after `model.rope`): a longer stage needs the RoPE and length changed with it."""
    from trainer.model import model_config

    config = model_config(cfg.model.path, cfg.model.rope)
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and manifest["seq_len"] > limit:
        raise ConfigError(
            "model.rope.max_position_embeddings",
            [f"the stage's seq_len {manifest['seq_len']} is longer than the {limit} positions of "
             f"{cfg.model.path}; extend the context with model.rope (theta, scaling, max_position_embeddings)"],
        )  # fmt: skip


def inherit_rope(earlier: RopeConfig, given: RopeConfig) -> RopeConfig:
    """Each field of `model.rope` as given, else as the run it follows had it: a stage after a
    long-context stage keeps its RoPE unless its config says otherwise."""
    return RopeConfig(**{k: v if v is not None else getattr(earlier, k) for k, v in asdict(given).items()})


def check_resumed_rope(cfg: TrainConfig, run_dir: Path) -> None:
    """A resumed run keeps the RoPE it trained with: taken from its config.json where this config gives
    none, refused where it gives another (the weights would be read under other positions)."""
    recorded_path = run_dir / "config.json"
    if not recorded_path.is_file():
        return
    from trainer.export import run_config

    recorded = run_config(run_dir).model.rope
    if not cfg.model.rope.given():
        cfg.model.rope = recorded
    elif cfg.model.rope != recorded:
        raise ConfigError(
            "model.rope",
            [f"{asdict(cfg.model.rope)} differs from {asdict(recorded)}, which {run_dir} trained with "
             "(a resumed run keeps its RoPE; start a new run --init-from it to change it)"],
        )  # fmt: skip


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
    resume = args.resume
    if resume == AUTO:  # the same command line starts the run and continues it after a requeue
        resume = checkpoint.LATEST if start.existing else None
    if resume:
        if not start.existing:
            raise checkpoint.CheckpointError(f"--resume: {run_dir} has no complete checkpoint")
        start.resume_tag, start.skipped = checkpoint.choose(run_dir, resume)
        folder = checkpoint.checkpoint_dir(run_dir) / start.resume_tag
        ranks, zero = checkpoint.saved_by(folder)
        world = process_ranks()[1]
        if zero >= 1 and ranks != world:  # before anything of the run is written (its config.json first)
            raise RunError(
                f"{folder}: saved by {ranks} ranks under ZeRO stage {zero}, whose optimizer state is split by "
                f"rank; this run has {world}: resume it on {ranks} ranks, or start a new run from its weights "
                f"with --init-from {run_dir}:{start.resume_tag}"
            )
    elif args.init_from:
        source, tag = split_init_from(args.init_from)  # a run folder: read_run_config checked it
        start.init_source = source
        start.init_tag, start.skipped = checkpoint.choose(source, tag)
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
    cfg: TrainConfig,
    manifest: dict,
    run_dir: Path,
    start: Start,
    steps: int,
    world: int,
    segments: list[Segment],
    anneal_steps: int = 0,
) -> str:
    micro = cfg.data.micro_batch_size
    runs = []
    for seg in segments or [
        Segment(0, 0, manifest["seq_len"], micro * cfg.data.gradient_accumulation * world)
    ]:
        accumulation = seg.batch // (micro * world)
        runs.append(
            f"{seg.steps} of {seg.batch * seg.seq_len:,} tokens ({world} ranks x {micro} x {accumulation} "
            f"accumulation x {seg.seq_len})"
        )
    anneal = f", LR annealed to 0 over the last {anneal_steps} steps" if anneal_steps else ""
    plan = (
        f"stage {manifest['stage']} (manifest {manifest['manifest_hash'][:16]}): {steps} steps"
        f"{runs[0][runs[0].index(' of') :] if len(runs) == 1 else ': ' + ', then '.join(runs)}, mode {cfg.mode}, ZeRO {cfg.deepspeed.zero_stage}, "
        f"{'bf16' if cfg.deepspeed.bf16 else 'fp32'}, {cfg.schedule.kind} LR {cfg.optim.lr:g}{anneal} -> "
        f"run {run_dir}"
    )
    if start.resume_tag:
        plan += f", resuming from {checkpoint.checkpoint_dir(run_dir) / start.resume_tag}"
    elif start.init_tag:
        plan += f", weights from {checkpoint.checkpoint_dir(start.init_source) / start.init_tag}"
    return plan


def release_shared_memory(rank: int) -> None:
    """Remove the name of this rank's segment of DeepSpeed's CPU all-reduce from /dev/shm.

    On CPU, DeepSpeed maps a 67 MB shared-memory segment a rank (`deepspeed_allreduce_buffer_<uid>_<addr>_
    <port>_<rank>`, opened by name by every other rank) and never unlinks it: each run, finished or killed,
    left its segments in /dev/shm, which is memory, until the machine ran out (a test suite's runs filled
    24 GB). Once every rank has opened the others' (a barrier after DeepSpeed's initialisation), the names
    are no longer needed; the mappings stay valid, and the memory goes back when the processes exit."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu" or not torch.distributed.is_initialized():
        return
    torch.distributed.barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}").unlink(missing_ok=True)


def init_distributed(rank: int) -> torch.device:
    """Join the process group and return this rank's device, both as DeepSpeed's accelerator has them
    (`DS_ACCELERATOR`, else the one it detects: NCCL and a GPU, or gloo and the CPU), so that the engine
    and the trainer never disagree (`DS_ACCELERATOR=cpu` on a machine with a GPU trains on the CPU)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    release_shared_memory(int(os.environ.get("RANK", 0)))
    device = torch.device("cpu")
    if accelerator.device_name() != "cpu":
        # a Slurm step that binds one GPU a task shows each rank one device, whatever its LOCAL_RANK
        index = int(os.environ.get("LOCAL_RANK", 0)) % max(accelerator.device_count(), 1)
        accelerator.set_device(index)
        device = torch.device(accelerator.device_name(index))
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return device


def init_model(cfg: TrainConfig, start: Start, rank: int):
    """`--init-from RUN[:step_N]`: the model built from that run's checkpoint, held in memory (nothing is
    written). Rank 0 reads the weights (the module states, memory-mapped: what a bf16 export of it would
    hold; a ZeRO-3 checkpoint is read through its fp32 masters); the other ranks build the architecture
    only, and DeepSpeed's initialize broadcasts rank 0's parameters to them (it does so for every model not
    built under zero.Init, before ZeRO partitions anything), so the weights are read once per run, not
    once per rank."""
    from trainer.export import trained_model

    attention = pick_attention(cfg.model.attention)
    model, _, _ = trained_model(
        start.init_source, start.init_tag, masters=False, attention=attention, weights=rank == 0,
        rope=cfg.model.rope,
    )  # fmt: skip
    return prepare_model(model, cfg), attention


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


def anneal_steps(segments: list[Segment], tokens: int) -> int:
    """The fewest last steps of the stage that hold its last `tokens` (the manifest's anneal_tokens)."""
    steps, held = 0, 0
    for seg in reversed(segments):
        for _ in range(seg.steps):
            if held >= tokens:
                return steps
            steps, held = steps + 1, held + seg.seq_len * seg.batch
    return steps


def lr_scale(cfg: TrainConfig, segments: list[Segment]):
    """A batch ramp's LR rule: a step whose batch is B runs at sqrt(B / the last batch) of the LR (the
    square-root rule: scale with the square root of the batch-size ratio); None without a ramp or with ramp_lr none."""
    if not cfg.data.batch_ramp or cfg.data.ramp_lr == "none" or not segments:
        return None
    last = segments[-1].batch
    return lambda step: (segment_of(segments, step).batch / last) ** 0.5


def build_engine(cfg: TrainConfig, model, stage_steps: int, anneal: int = 0, scale=None):
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
        lr_scheduler=lambda kept: Schedule(kept, cfg.schedule, cfg.optim.lr, stage_steps, anneal, scale),
        config=deepspeed_config(cfg),
    )
    return engine, schedule


def taken(segments: list[dict], step: int) -> list[dict]:
    """The part of a step plan the first `step` steps followed."""
    return [
        {**seg, "steps": min(seg["steps"], step - seg["first_step"])}
        for seg in segments
        if seg["first_step"] < step
    ]


def resume(
    engine, loader, ema, run_dir: Path, tag: str, manifest: dict, segments: list[Segment]
) -> tuple[int, int]:
    """Restore a checkpoint of this run (engine, schedule, loader position, RNG, EMA); the step and the
    tokens seen it was saved at. The ramps must give the steps already taken the lengths and batches
    they had (the loader position counts sequences of those lengths)."""
    try:
        state = checkpoint.load(engine, run_dir, tag)
    except checkpoint.CheckpointError:
        raise
    except ValueError as e:  # the schedule refuses a config whose restarts rewrite steps already taken
        raise RunError(f"{checkpoint.checkpoint_dir(run_dir) / tag}: {e}") from None
    if state["manifest_hash"] != manifest["manifest_hash"]:
        raise RunError(
            f"{run_dir} was trained on manifest {state['manifest_hash'][:16]}, not "
            f"{manifest['manifest_hash'][:16]}: resuming would read other data (use --init-from to "
            "start a new stage from its weights)"
        )
    plan = describe_segments(segments)
    if "plan" in state and taken(state["plan"], state["step"]) != taken(plan, state["step"]):
        raise RunError(
            f"{run_dir}: data.seq_len_ramp / data.batch_ramp give the {state['step']} steps already taken "
            f"other lengths or batches than the checkpoint's ({taken(state['plan'], state['step'])}); set "
            "them as the run had them"
        )
    loader.load_state_dict(state["loader"])
    if ema is not None:
        shadow = checkpoint.load_extra(run_dir, "ema", tag)
        if shadow is None:
            raise RunError(f"ema is set but {run_dir}'s checkpoint {tag} has no EMA weights")
        if shadow.keys() != ema.shadow.keys() or any(
            not torch.isfinite(t).all() or t.shape != ema.shadow[n].shape for n, t in shadow.items()
        ):
            raise RunError(
                f"{run_dir}: checkpoint {tag}'s EMA weights do not match the model's trainable weights "
                "(other names or shapes, or not finite)"
            )
        # each beside its weight (on this rank's device), not where the checkpoint was written from
        ema.shadow = {n: t.to(ema.shadow[n].device) for n, t in shadow.items()}
    step, tokens_seen = state["step"], state["tokens_seen"]
    log.info("resumed %s at step %d (%s tokens seen)", run_dir, step, f"{tokens_seen:,}")
    return step, tokens_seen


def run_evaluation(engine, ema, cfg: TrainConfig, seq_len: int, device, tokenizer=None) -> dict:
    """Held-out loss and perplexity of every eval set, of the weights and (with `ema`) of their average;
    with `eval.benchmarks`, the benchmarks' accuracies of the weights (`tokenizer`: the model's)."""
    results = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
    if ema is not None:
        with ema.applied(engine.module):
            averaged = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
        results.update({k.replace("eval/", "eval_ema/", 1): v for k, v in averaged.items()})
    if cfg.eval.benchmarks.tasks:
        from trainer import bench

        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        # the ranks share the questions, except under ZeRO-3, where every forward pass needs all of them
        shard = (
            (torch.distributed.get_rank(), world) if world > 1 and cfg.deepspeed.zero_stage < 3 else (0, 1)
        )
        results.update(bench.in_training(engine.module, tokenizer, cfg.eval.benchmarks, device, shard))
    if cfg.eval.needle.set:
        from trainer import needle

        results.update(
            needle.in_training(
                engine.module,
                tokenizer,
                cfg.eval.needle,
                needle_folder(cfg),
                seq_len,
                device,
                cfg.data.pad_id,
            )
        )
    return results


def needle_folder(cfg: TrainConfig) -> str:
    """The held-out folder of the eval set the needle check cuts its haystacks from."""
    return next(s.path for s in cfg.eval.sets if s.name == cfg.eval.needle.set)


def save_checkpoint(
    engine,
    ema,
    loader_state: dict,
    manifest: dict,
    run_dir: Path,
    step: int,
    tokens_seen: int,
    cfg,
    segments: list[Segment],
) -> None:
    client = {
        "step": step,
        "tokens_seen": tokens_seen,
        "loader": loader_state,
        "manifest_hash": manifest["manifest_hash"],
        "plan": describe_segments(segments),
    }
    extra = {"ema": ema.shadow} if ema is not None else None
    checkpoint.save(engine, run_dir, step, client, cfg.checkpoint.keep, extra)


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


def train(args: argparse.Namespace, first: bool, held: contextlib.ExitStack) -> int:
    # -- config, manifest, run folder, and where the weights come from: all checked before any work -
    try:
        cfg, manifest, run_dir = read_run_config(args)
        refuse_custom_code(cfg.model.path)  # before anything of the model folder is read by transformers
        start = choose_start(args, cfg, run_dir)
    except FileNotFoundError as e:  # an --init-from run's config.json
        raise RunError(str(e)) from None
    for line in start.skipped if first else ():
        print(f"warning: {line}: passed over, using {start.resume_tag or start.init_tag}", file=sys.stderr)

    # -- data ------------------------------------------------------------------------------------
    rank, world = process_ranks()
    # `auto` made a number now, before anything reads it: config.json records the stage the run used
    cfg.deepspeed.zero_stage = cfg.deepspeed.stage_for(world)
    seq_len = manifest["seq_len"]
    micro = cfg.data.micro_batch_size
    segments = step_plan(cfg.data, manifest["tokens"], seq_len, world)
    ramped = bool(cfg.data.seq_len_ramp or cfg.data.batch_ramp)
    lengths = plan_sequences(segments) if ramped and segments else None
    loader = PackedLoader(manifest, rank, world, micro, cfg.data.workers, cfg.data.pad_id, lengths)
    stage_steps = sum(seg.steps for seg in segments)  # the schedule spans the stage, even when stopped early
    total_steps = min(stage_steps, cfg.max_steps) if cfg.max_steps else stage_steps
    annealed = anneal_steps(segments, int(manifest.get("anneal_tokens", 0)))
    shape = {}
    if ramped:
        shape["ramps"] = [
            {"first_step": g.first_step, "seq_len": g.seq_len, "batch": g.batch} for g in segments
        ]
    if annealed:
        shape["anneal"] = {
            "tokens": int(manifest["anneal_tokens"]),
            "first_step": stage_steps - annealed,
            "steps": annealed,
        }
    plan = describe_plan(cfg, manifest, run_dir, start, total_steps, world, segments, annealed)
    if args.dry_run:
        if rank == 0:
            print(json.dumps(asdict(cfg), indent=2))
            print(plan)
        return 0
    if rank == 0:  # one writer per run folder: a second run into it is refused here, before any work
        held.enter_context(output_lock(run_dir, "trainer/main.py"))
    if total_steps < 1:
        raise RunError(f"the stage gives fewer sequences than one step ({plan})")
    if start.existing and not start.resume_tag:  # the folders on disk decide, whatever `latest` says
        raise RunError(
            f"{run_dir} already holds checkpoints ({checkpoint.describe(start.existing)}): pass --resume to "
            "continue it, or another --output"
        )
    tokenizer = None
    if cfg.eval.benchmarks.tasks or cfg.eval.needle.set:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=False)
    if (
        cfg.eval.needle.set
    ):  # its haystacks built now: held-out text too short for them is said before any work
        from trainer import needle

        try:
            needle.cases(tokenizer, cfg.eval.needle, needle_folder(cfg), seq_len)
        except needle.NeedleError as e:
            raise RunError(str(e)) from None
    signals = StopSignals(cfg.checkpoint.signals)  # from here on, a stop request waits for a step boundary

    # -- model -------------------------------------------------------------------------------------
    device = init_distributed(rank)
    log.info("%s", plan)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if start.init_tag:
        model, attention = init_model(cfg, start, rank)
        origin = f"{checkpoint.checkpoint_dir(start.init_source) / start.init_tag}"
    else:
        model, attention = load_model(cfg)
        origin = cfg.model.path
    log.info("model %s (%s attention): %s", origin, attention, trainable_summary(model))
    if rank == 0:
        head = segments[0]
        write_run_files(cfg, manifest, run_dir, start, head.seq_len * head.batch, shape)

    # -- engine, and the run's state when it resumes ------------------------------------------------
    engine, schedule = build_engine(cfg, model, stage_steps, annealed, lr_scale(cfg, segments))
    ema = WeightEMA(engine.module, cfg.ema) if cfg.ema else None
    step, tokens_seen = 0, 0
    if start.resume_tag:
        step, tokens_seen = resume(engine, loader, ema, run_dir, start.resume_tag, manifest, segments)
    first_step, saved_step = step, step
    skips_in_a_row = 0
    last_eval: dict = {}  # the latest evaluation's figures: the last line gives its perplexities

    # -- loop ----------------------------------------------------------------------------------------
    logger = RunLogger(
        run_dir,
        enabled=rank == 0,
        tensorboard=cfg.log.tensorboard,
        wandb={"project": cfg.log.wandb_project, "config": asdict(cfg)} if cfg.log.wandb else None,
        start_step=step,
    )
    model_config = getattr(model, "config", None) or model.base_model.config
    peak = peak_flops(cfg.log.peak_tflops)
    losses_since_log = SourceLosses([src["name"] for src in manifest["sources"]], device)
    progress = None
    if rank == 0:
        from tqdm import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"train {manifest['stage']}", unit="step")
        held.callback(progress.close)  # an error line after it starts a line of its own
    engine.train()
    tick, tick_step, piece_squares = time.perf_counter(), step, 0.0
    micro_batches = iter(loader)

    evaluating = bool(cfg.eval.sets or cfg.eval.benchmarks.tasks)
    if evaluating and step == 0:  # the starting point: how the base model does on both domains
        logger.log(0, run_evaluation(engine, ema, cfg, seq_len, device, tokenizer))
        tick = time.perf_counter()

    while step < total_steps:
        lr = schedule.get_last_lr()[0]  # the LR this step uses (the schedule moves on at its end)
        position = loader.state_dict()  # the data before this step: what a stop here saves
        seg = segment_of(segments, step)
        accumulation = seg.batch // (micro * world)
        if accumulation != engine.gradient_accumulation_steps():  # a batch ramp's boundary
            engine.set_train_batch_size(seg.batch)
        batches = [next(micro_batches) for _ in range(accumulation)]
        totals = step_totals(batches, signals.received is not None, device)
        if totals.stop:
            break
        # the step's loss is the mean over all its target tokens, on every rank and micro-batch: DeepSpeed
        # averages gradients over ranks (hence x world) and would divide by the accumulation steps (not here)
        scale = world / max(totals.targets, 1.0)
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
        step += 1
        bad = non_finite(step_loss, engine.get_global_grad_norm(), device)
        # `skip`: DeepSpeed's overflow check found the gradients non-finite and discarded the update (the
        # same decision on every rank: the norm is global); the schedule moves on as after any step, so
        # the LR of a step does not depend on what was skipped before it
        skipped = bool(bad) and cfg.optim.nan_policy == "skip" and not engine.was_step_applied()
        skips_in_a_row = skips_in_a_row + 1 if skipped else 0
        if skipped and skips_in_a_row <= cfg.optim.max_skips:
            schedule.step()
            if progress is not None:  # a line of its own, above the progress bar
                progress.write(f"warning: step {step} skipped: its {bad} is not finite", file=sys.stderr)
        elif bad:  # the step has already moved the weights: nothing of it is saved, the last checkpoint stays
            if progress is not None:
                progress.close()
            logger.close()
            if rank == 0:
                kept = (
                    f"checkpoint step_{saved_step:08d} is kept" if saved_step else "no checkpoint was written"
                )
                why = (
                    f"non-finite in {skips_in_a_row} steps in a row (optim.max_skips {cfg.optim.max_skips})"
                    if skipped
                    else "applied by DeepSpeed all the same (its overflow check is off here: use ZeRO 1-3 or bf16)"
                    if cfg.optim.nan_policy == "skip"
                    else "became non-finite"
                )
                print(
                    f"error: the {bad} {why} at step {step}: the run stopped without saving ({kept}); "
                    "lower optim.lr or look at this step's data, then run again (with --resume auto)",
                    file=sys.stderr,
                )
            return 1
        tokens_per_step = seg.batch * seg.seq_len
        tokens_seen += tokens_per_step
        piece_squares += totals.piece_squares
        if ema is not None:
            ema.update(engine.module)
        if progress is not None:
            progress.update(1)

        if step % cfg.log.every == 0 or step == total_steps:
            window = losses_since_log.reduce()
            elapsed = max(time.perf_counter() - tick, 1e-9)
            window_tokens = sum(
                segment_of(segments, k).batch * segment_of(segments, k).seq_len
                for k in range(tick_step, step)
            )
            tokens_per_s = window_tokens / elapsed
            # attention as papers count it (the whole sequence), and as document masking computes it
            flops = flops_per_token(model_config, seg.seq_len)
            flops_docs = flops_per_token(model_config, piece_squares / max(window_tokens, 1))
            norm = engine.get_global_grad_norm()  # None where DeepSpeed did not compute one: logged so
            record = {
                "loss": window.loss,
                "lr": lr,
                "grad_norm": None if norm is None else float(norm),
                "tokens_seen": tokens_seen,
                "tokens_per_s": tokens_per_s,
                "tflops_per_device": tokens_per_s * flops / world / 1e12,
                "tflops_per_device_docs": tokens_per_s * flops_docs / world / 1e12,
            }
            if engine.skipped_steps:  # steps discarded for non-finite gradients, in all (nan_policy skip)
                record["skipped_steps"] = engine.skipped_steps
            if peak:
                record["mfu"] = tokens_per_s * flops / world / peak
                record["mfu_docs"] = tokens_per_s * flops_docs / world / peak
            if ramped:
                record.update({"seq_len": seg.seq_len, "batch_sequences": seg.batch})
            record.update(window.by_source)
            logger.log(step, record)
            if progress is not None:
                progress.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}")
            tick, tick_step, piece_squares = time.perf_counter(), step, 0.0

        paused = False
        if evaluating and ((cfg.eval.every and step % cfg.eval.every == 0) or step == total_steps):
            last_eval = run_evaluation(engine, ema, cfg, seq_len, device, tokenizer)
            logger.log(step, last_eval)
            paused = True
        if step % cfg.checkpoint.every == 0 or step == total_steps:
            save_checkpoint(
                engine, ema, loader.state_dict(), manifest, run_dir, step, tokens_seen, cfg, segments
            )
            saved_step, paused = step, True
        if paused:  # evaluation and checkpoints do not count against tokens/s (nor the documents' FLOPs
            # of the steps before them, which the window no longer counts)
            tick, tick_step, piece_squares = time.perf_counter(), step, 0.0

    stopped = step < total_steps
    if stopped and saved_step != step:  # asked to stop: the steps since the last checkpoint are kept
        save_checkpoint(engine, ema, position, manifest, run_dir, step, tokens_seen, cfg, segments)
    if progress is not None:
        progress.close()
    logger.close()
    if stopped:
        if rank == 0:
            kept = f"checkpoint step_{step:08d}" if step > first_step else "nothing trained yet"
            print(
                f"stopped by {signals.received or 'another rank'} at step {step} ({kept}); run the same "
                "command with --resume auto to continue",
                file=sys.stderr,
            )
        return STOPPED
    if rank == 0:
        skips = f" ({engine.skipped_steps} skipped: non-finite)" if engine.skipped_steps else ""
        ppl = [
            f"{k.split('/')[1]} {v:.2f}"
            for k, v in last_eval.items()
            if k.startswith("eval/") and k.endswith("/ppl")
        ]
        held_out = f"; held-out perplexity {', '.join(ppl)}" if ppl else ""
        print(
            f"done: {step} steps{skips}, {tokens_seen:,} tokens{held_out}; "
            f"checkpoints in {checkpoint.checkpoint_dir(run_dir)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
