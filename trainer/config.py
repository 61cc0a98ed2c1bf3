"""The trainer's configuration: one dataclass a concern, loaded from YAML, `key.sub=value` overrides.

Defaults are the CPT recipe (Ziya2's AdamW 0.9/0.95, weight decay 0.1, clip 1.0, bf16, warmup 1%,
cosine to a floor) and are overridden by `trainer/configs/*.yaml`, then by the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cpt.config import ConfigError, apply_overrides, build, read_yaml

# what a job scheduler sends before it stops a job (a run saves and exits on those it is given)
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP")


@dataclass
class RopeConfig:
    """The run's rotary position embedding where it differs from the model folder's: a stage that extends
    the context. Unset fields keep what the model (or the run it starts --init-from) has."""

    theta: float | None = None  # rope_theta (LLaMA 2: 10,000; Llama 3: 500,000)
    # transformers' rope_parameters besides the theta: {rope_type: linear, factor: 4}, dynamic, yarn
    # (factor, original_max_position_embeddings), llama3 (factor, low_freq_factor, high_freq_factor,
    # original_max_position_embeddings); {rope_type: default} removes a scaling
    scaling: dict[str, Any] | None = None
    max_position_embeddings: int | None = None  # the length the exported config.json declares

    def given(self) -> bool:
        return not (self.theta is None and self.scaling is None and self.max_position_embeddings is None)


@dataclass
class ModelConfig:
    path: str = ""  # a local Hugging Face Llama-family folder (AutoModelForCausalLM)
    # auto: flash_attention_2 on GPU when installed, else sdpa; documents are kept apart either way
    attention: Literal["auto", "flash_attention_2", "sdpa", "eager", "flex_attention"] = "auto"
    gradient_checkpointing: bool = False
    rope: RopeConfig = field(default_factory=RopeConfig)


@dataclass
class LoraConfig:
    r: int = 64
    alpha: int = 128
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    # the new vocabulary's rows must train too (Chinese-LLaMA): saved whole beside the adapters
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens", "lm_head"])


@dataclass
class DataConfig:
    micro_batch_size: int = 1  # sequences a rank runs per forward pass
    gradient_accumulation: int = 1
    workers: int = 1  # loader worker processes a rank
    pad_id: int = 0
    # Ramps within a stage (Llama 3: the batch grows 4M -> 8M -> 16M tokens, for stability): pairs [AT, VALUE],
    # the first AT 0, each from AT on, AT in tokens of the stage trained before it ("252M" or 252000000) or,
    # with ramp_unit steps, in optimizer steps. seq_len_ramp's VALUEs are packing lengths (<= the stage's
    # seq_len, which applies when unset); batch_ramp's are global batches in sequences (multiples of
    # micro_batch_size x ranks; unset: micro_batch_size x gradient_accumulation x ranks). Changes land at step
    # boundaries.
    seq_len_ramp: list[list[int | float | str]] = field(default_factory=list)
    batch_ramp: list[list[int | float | str]] = field(default_factory=list)
    ramp_unit: Literal["tokens", "steps"] = "tokens"
    # the LR of a step whose batch is B is optim.lr x sqrt(B / the ramp's last batch) (square-root LR scaling); none
    ramp_lr: Literal["sqrt", "none"] = "sqrt"


@dataclass
class OptimConfig:
    lr: float = 3e-5  # ~10% of the base model's pre-training peak (3e-5 for a 7B, as in Ziya2)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1  # not on norms and biases
    clip: float = 1.0
    # a step whose loss or gradient norm is not finite: `stop` the run (exit 1, the last checkpoint kept), or
    # `skip` it as Megatron does (DeepSpeed discards the update, the step is counted as skipped_steps in
    # metrics.jsonl and training goes on); `max_skips` skipped steps in a row stop the run as `stop` would
    nan_policy: Literal["stop", "skip"] = "stop"
    max_skips: int = 10


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "constant", "wsd"] = "cosine"
    warmup_ratio: float = 0.01
    min_lr: float = 1e-5  # cosine floor (Ziya2) and the end of wsd's decay
    decay_ratio: float = 0.1  # wsd: the last share of steps decays linearly to min_lr
    # optimizer steps (0-based) at which the schedule restarts, whether or not the run was interrupted there
    # (none by default: re-warming when continuing on the same data hurts, Gupta et al. 2023; `cpt ablate`
    # measures it). `rewarm`: from the step, a new warmup (warmup_ratio of the steps left) and decay over
    # the rest of the stage; `constant`: hold the LR the schedule had reached at the step
    restarts: list[int] = field(default_factory=list)
    restart: Literal["rewarm", "constant"] = "rewarm"
    # removed (it re-anchored the schedule at whatever step a run resumed at): kept only to say what replaces
    # it; `continue`, what every earlier run folder's config.json holds, changes nothing and is accepted
    on_resume: str | None = None


@dataclass
class DeepSpeedConfig:
    # auto: one rank in fp32, 0 (nothing to partition: ZeRO's flat copies and buckets only cost memory
    # and time); otherwise 2 (bf16 needs DeepSpeed's fp32 masters and fp32 gradient sums, offload needs
    # ZeRO, several ranks share the optimizer state). A number is used as given
    zero_stage: Literal["auto", 0, 1, 2, 3] = "auto"
    offload: Literal["none", "cpu"] = "none"  # optimizer (and, at stage 3, parameter) offload
    bf16: bool = True

    def stage_for(self, world: int) -> int:
        """The ZeRO stage a run of `world` ranks uses (`zero_stage`, resolved when auto)."""
        if self.zero_stage != "auto":
            return int(self.zero_stage)
        return 0 if world == 1 and not self.bf16 and self.offload == "none" else 2


@dataclass
class EvalSet:
    name: str = ""
    path: str = ""  # a token-shard folder (from `run.py tokenize`) held out of every stage
    sequences: int = 16
    seq_len: int | None = None  # the packing length (default: the stage's): a long stage's short-context ppl


@dataclass
class NeedleConfig:
    """Needle in a haystack (passkey retrieval) at every evaluation: a passkey sentence hidden at each depth
    of haystacks cut from held-out text at each length, the model asked for it at the end; the accuracy of
    every (length, depth) is logged as needle/L<length>/d<depth>, and their mean as needle/accuracy."""

    set: str = ""  # the eval set (eval.sets name) whose documents make the haystacks; unset: no check
    lengths: list[int] = field(
        default_factory=list
    )  # tokens; default: 1/4, 1/2 and all of the stage's seq_len
    depths: list[int] = field(
        default_factory=lambda: [0, 25, 50, 75, 100]
    )  # % of the haystack before the needle
    trials: int = 4  # passkeys (and haystacks) per cell
    seed: int = 0


@dataclass
class BenchmarkConfig:
    """Benchmarks run with the held-out sets (at step 0, every `eval.every` steps and at the end), through
    `cpt eval`'s tasks: lm-eval's own prompts and scoring on local files."""

    tasks: list[str] = field(default_factory=list)  # mmlu (the old domain, English); cmmlu, ceval (Chinese)
    data: str = ""  # a folder holding mmlu/, cmmlu/, ceval/ in their published layouts (as cpt eval --data)
    limit: int = 20  # questions per subject: a seeded subset, the same at every evaluation
    shots: int = 0  # 0 or 5 (few-shot examples from dev)
    seed: int = 0  # the subset's seed
    batch_size: int = 8


@dataclass
class EvalConfig:
    every: int = 50  # steps; 0 turns evaluation off (it also runs at the end)
    sets: list[EvalSet] = field(default_factory=list)
    batch_size: int = 4
    benchmarks: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    needle: NeedleConfig = field(default_factory=NeedleConfig)


@dataclass
class CheckpointConfig:
    every: int = 100  # steps; a checkpoint is always written at the end
    keep: int = 3  # the last K are kept
    # on any of these, save a checkpoint at the next step boundary and exit with status 75, to be run again
    # with --resume auto: Slurm sends SIGTERM on preemption and `--signal USR1@SECONDS` before the time limit
    signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])


@dataclass
class LogConfig:
    every: int = 1
    tensorboard: bool = True
    wandb: bool = False
    wandb_project: str = "cpt"
    peak_tflops: float | None = None  # per device, for MFU; known GPUs are looked up when unset


@dataclass
class TrainConfig:
    mix: str = ""  # a stage name (runs/mixes/NAME/manifest.json) or a manifest path
    output: str = ""  # the run's folder (default runs/train/<stage>)
    mode: Literal["full", "embeddings", "lora"] = "full"
    max_steps: int | None = None  # stop early (default: the whole stage)
    seed: int = 0
    ema: float | None = None  # decay of an EMA of the weights, evaluated alongside (e.g. 0.999)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> list[str]:
        problems = []
        if not self.mix:
            problems.append("mix: missing (a stage name such as stage2, or a manifest path)")
        if not self.model.path:
            problems.append("model.path: missing (a Hugging Face model folder; --model DIR)")
        for key, value, least in (
            ("data.micro_batch_size", self.data.micro_batch_size, 1),
            ("data.gradient_accumulation", self.data.gradient_accumulation, 1),
            ("checkpoint.keep", self.checkpoint.keep, 1),
            ("checkpoint.every", self.checkpoint.every, 1),
            ("log.every", self.log.every, 1),
            ("data.workers", self.data.workers, 0),
            ("eval.every", self.eval.every, 0),
            ("optim.weight_decay", self.optim.weight_decay, 0),
            ("optim.clip", self.optim.clip, 0),
            ("optim.max_skips", self.optim.max_skips, 1),
        ):
            if value < least:
                problems.append(f"{key}: must be >= {least} (got {value})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps: must be >= 1 (got {self.max_steps})")
        if self.optim.lr <= 0 or self.schedule.min_lr < 0 or self.schedule.min_lr > self.optim.lr:
            problems.append(
                f"optim.lr / schedule.min_lr: need 0 <= min_lr <= lr (got {self.schedule.min_lr}, {self.optim.lr})"
            )
        if len(self.optim.betas) != 2 or not all(0 <= b < 1 for b in self.optim.betas):
            problems.append(f"optim.betas: two values within [0, 1) (got {self.optim.betas})")
        if not 0 <= self.schedule.warmup_ratio < 1 or not 0 < self.schedule.decay_ratio <= 1:
            problems.append("schedule: warmup_ratio within [0, 1) and decay_ratio within (0, 1]")
        restarts = self.schedule.restarts
        if any(r <= 0 for r in restarts) or restarts != sorted(set(restarts)):
            problems.append(f"schedule.restarts: optimizer steps > 0 in increasing order (got {restarts})")
        if self.schedule.on_resume not in (None, "continue"):
            problems.append(
                "schedule.on_resume was removed: use schedule.restarts: [STEP] and schedule.restart: "
                f"{self.schedule.on_resume} (the LR then restarts at STEP whether or not the run resumes there)"
            )
        if self.ema is not None and not 0 < self.ema < 1:
            problems.append(f"ema: a decay within (0, 1) (got {self.ema})")
        if self.ema is not None and self.deepspeed.zero_stage == 3:
            problems.append("ema: needs whole parameters on every rank (zero_stage 0-2)")
        for name in self.checkpoint.signals:
            if name not in STOP_SIGNALS:
                problems.append(f"checkpoint.signals: {name!r} is not one of {', '.join(STOP_SIGNALS)}")
        rope = self.model.rope
        if rope.theta is not None and rope.theta <= 0:
            problems.append(f"model.rope.theta: must be > 0 (got {rope.theta})")
        if rope.max_position_embeddings is not None and rope.max_position_embeddings < 1:
            problems.append(
                f"model.rope.max_position_embeddings: must be >= 1 (got {rope.max_position_embeddings})"
            )
        if rope.scaling is not None and "rope_type" not in rope.scaling:
            problems.append("model.rope.scaling: needs rope_type (linear, dynamic, yarn, llama3 or default)")
        bench = self.eval.benchmarks
        for task in bench.tasks:
            if task not in ("mmlu", "cmmlu", "ceval"):
                problems.append(f"eval.benchmarks.tasks: {task!r} is not one of mmlu, cmmlu, ceval")
        if bench.tasks and not bench.data:
            problems.append("eval.benchmarks.data: missing (the folder holding mmlu/, cmmlu/, ceval/)")
        if bench.shots not in (0, 5) or bench.limit < 1 or bench.batch_size < 1:
            problems.append("eval.benchmarks: shots 0 or 5, limit and batch_size >= 1")
        names = [s.name for s in self.eval.sets]
        for i, s in enumerate(self.eval.sets):
            if not s.name or not s.path or names.count(s.name) > 1:
                problems.append(f"eval.sets[{i}]: each set needs a unique name and a path")
        return problems


def load_config(path: str | Path | None, overrides: list[str]) -> TrainConfig:
    """The config file (if any) with the command line's `key=value` overrides applied, validated."""
    data = read_yaml(path) if path else {}
    apply_overrides(data, overrides)
    return build(TrainConfig, data, str(path or "command line"))


__all__ = ["ConfigError", "TrainConfig", "load_config"]
