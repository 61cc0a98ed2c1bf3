"""Everything a run checks before it does any work: the config with its overrides, the stage's
manifest, the run folder, the model folder against the stage's tokenizer, the eval sets, where the
weights come from (resume, --init-from, the model folder) and the plan of steps. Each problem is one
line naming the key or file (`RunError`, `ConfigError`, `ManifestError`, `CheckpointError`), found
before the model loads or DeepSpeed starts. Nothing here writes."""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cpt.config import ConfigError
from cpt.io import LOCK_NAME
from cpt.manifest import ManifestError, read_stage_manifest
from trainer import checkpoint
from trainer.config import RopeConfig, TrainConfig, load_config
from trainer.schedule import Segment, plan_sequences, step_plan

REPO = Path(__file__).resolve().parent.parent
AUTO = "auto"  # --resume auto: resume when there is a checkpoint, else start


class RunError(ValueError):
    """A run that cannot start or continue as asked; the message is the one line the user sees."""


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


# what the trainer writes in checkpoints/: step_N folders (step_N.<pid> while one is saved), `latest`,
# and the two recovery scripts DeepSpeed copies beside its ZeRO checkpoints (engine._copy_recovery_script)
CHECKPOINT_FILE = re.compile(rf"step_\d+(?:\.\d+)?|{checkpoint.LATEST}|zero_to_fp32\.py|zero_to_torch\.py")


def _finished(name: str) -> str:
    """The name a half-written file or folder will have once finished (itself when it is not one)."""
    unfinished = UNFINISHED.fullmatch(name)
    return unfinished["name"] or unfinished["plain"] if unfinished else name


def _is_run_file(name: str) -> bool:
    return _finished(name) in RUN_FILES or name == LOCK_NAME  # a killed run's lock file


def _is_checkpoint_file(name: str) -> bool:
    return CHECKPOINT_FILE.fullmatch(_finished(name)) is not None


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
    # checkpoint saves remove folders under checkpoints/ (a leftover step_N.<pid>.tmp, pruned old steps),
    # so a checkpoints/ folder may hold only what the trainer writes there
    held = run_dir / "checkpoints"
    for folder, ours in ((run_dir, _is_run_file), (held, _is_checkpoint_file)):
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        foreign = sorted(n for n in names if not ours(n))
        if foreign:
            raise ConfigError(
                "--output",
                [
                    f"{folder} holds files a trainer run does not write ({', '.join(foreign[:3])}"
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
        from trainer.run_folder import base_model, run_config

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
        from trainer.evaluation import benchmarks as bench

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
    from trainer.run_folder import run_config

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


def anneal_steps(segments: list[Segment], tokens: int) -> int:
    """The fewest last steps of the stage that hold its last `tokens` (the manifest's anneal_tokens)."""
    steps, held = 0, 0
    for seg in reversed(segments):
        for _ in range(seg.steps):
            if held >= tokens:
                return steps
            steps, held = steps + 1, held + seg.seq_len * seg.batch
    return steps


@dataclass
class StepPlan:
    """The stage's steps as this run takes them: the segments of the length and batch ramps, the steps
    the schedule spans (the whole stage) and those this run takes (`max_steps`), the anneal's, and what
    run.json records of them."""

    segments: list[Segment]
    stage_steps: int
    total_steps: int
    annealed: int
    ramped: bool
    shape: dict

    def sequence_lengths(self) -> list[int] | None:
        """Each sequence's length in the loader's order under a length or batch ramp; None without."""
        return plan_sequences(self.segments) if self.ramped and self.segments else None


def plan_steps(cfg: TrainConfig, manifest: dict, world: int) -> StepPlan:
    segments = step_plan(cfg.data, manifest["tokens"], manifest["seq_len"], world)
    ramped = bool(cfg.data.seq_len_ramp or cfg.data.batch_ramp)
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
    return StepPlan(segments, stage_steps, total_steps, annealed, ramped, shape)


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


def check_startable(run_dir: Path, start: Start, total_steps: int, plan: str) -> None:
    """A stage too small for one step, or a run folder with checkpoints that is not asked to resume."""
    if total_steps < 1:
        raise RunError(f"the stage gives fewer sequences than one step ({plan})")
    if start.existing and not start.resume_tag:  # the folders on disk decide, whatever `latest` says
        raise RunError(
            f"{run_dir} already holds checkpoints ({checkpoint.describe(start.existing)}): pass --resume to "
            "continue it, or another --output"
        )
