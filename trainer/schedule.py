"""Learning-rate schedules: `lr_multiplier`, a pure function of the step, and `Schedule`, the object that
sets each optimizer step's LR from it and whose state every checkpoint keeps.

Being a function of the step alone, a resumed run continues its schedule exactly (no re-warming on the
same data: Gupta et al. 2023), and a new stage started with `--init-from` re-warms and re-decays
(Ibrahim et al. 2024). A re-warm (or a held LR) within a stage is planned, `schedule.restarts`, and
happens at its step whether or not the run was interrupted there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

from trainer.config import ConfigError, DataConfig, ScheduleConfig

log = logging.getLogger(__name__)

_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}


def amount(value: int | float | str, key: str) -> int:
    """A count as a ramp gives it: 4096, 2.5e6, "252M", "2.87T" (K, M, G or B, T)."""
    text = str(value).strip().replace("_", "").replace(",", "")
    scale = _SUFFIXES.get(text[-1:].upper(), 1) if text else 1
    try:
        number = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise ConfigError(f"{key}", [f"{value!r} is not a count (4096, 2.5e6, 252M, 2.87T)"]) from None
    if number < 0 or number != number:
        raise ConfigError(f"{key}", [f"{value!r} must be >= 0"])
    return round(number)


@dataclass(frozen=True)
class Segment:
    """A run of optimizer steps with one packing length and one global batch (in sequences)."""

    first_step: int
    steps: int
    seq_len: int
    batch: int


def _ramp(pairs: list, key: str, multiple: int = 1, most: int | None = None) -> list[tuple[int, int]]:
    points = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"{key}[{i}]", [f"a pair [AT, VALUE] (got {pair!r})"])
        at, value = amount(pair[0], f"{key}[{i}]"), amount(pair[1], f"{key}[{i}]")
        if value < 1 or value % multiple or (most is not None and value > most):
            bound = f" and <= {most}" if most is not None else ""
            raise ConfigError(f"{key}[{i}]", [f"{pair[1]!r} must be a multiple of {multiple}{bound}"])
        points.append((at, value))
    ats = [at for at, _ in points]
    if points and (ats[0] != 0 or ats != sorted(set(ats))):
        raise ConfigError(f"{key}", [f"the first AT is 0 and the ATs increase (got {ats})"])
    return points


def _value_at(points: list[tuple[int, int]], at: int, default: int) -> int:
    value = default
    for start, v in points:
        if at >= start:
            value = v
    return value


def step_plan(data: DataConfig, budget: int, seq_len: int, world: int) -> list[Segment]:
    """The stage's optimizer steps as runs of (packing length, global batch), from `data`'s ramps: a step
    takes the length and batch in force at the tokens (or steps) trained before it, and steps are taken
    while the stage's token budget holds a whole one. Without ramps, one run of the stage's `seq_len` and
    the configured batch (the stage's sequences, whole steps of them)."""
    micro = data.micro_batch_size
    unit_batch = micro * world
    default_batch = unit_batch * data.gradient_accumulation
    lengths = _ramp(data.seq_len_ramp, "data.seq_len_ramp", most=seq_len)
    batches = _ramp(data.batch_ramp, "data.batch_ramp", multiple=unit_batch)
    if not lengths and not batches:  # the loader's own count: round(tokens / seq_len) sequences
        per_rank = round(budget / seq_len) // world
        steps = -(-per_rank // micro) // data.gradient_accumulation
        return [Segment(0, steps, seq_len, default_batch)] if steps else []
    segments: list[Segment] = []
    step, tokens = 0, 0
    while True:
        at = tokens if data.ramp_unit == "tokens" else step
        length = _value_at(lengths, at, seq_len)
        batch = _value_at(batches, at, default_batch)
        if tokens + length * batch > budget:
            break
        last = segments[-1] if segments else None
        if last and (last.seq_len, last.batch) == (length, batch):
            segments[-1] = Segment(last.first_step, last.steps + 1, length, batch)
        else:
            segments.append(Segment(step, 1, length, batch))
        step, tokens = step + 1, tokens + length * batch
    return segments


def plan_sequences(segments: list[Segment]) -> list[tuple[int, int]]:
    """The loader's runs of (global sequences, packing length) for a step plan."""
    return [(s.steps * s.batch, s.seq_len) for s in segments]


def segment_of(segments: list[Segment], step: int) -> Segment:
    for s in segments:
        if step < s.first_step + s.steps:
            return s
    return segments[-1]


def describe_segments(segments: list[Segment]) -> list[dict]:
    return [asdict(s) for s in segments]


def lr_multiplier(
    step: int, total: int, kind: str, warmup_ratio: float, floor: float, decay_ratio: float = 0.1
) -> float:
    """LR at optimizer step `step` (0-based) of `total`, as a fraction of the peak.

    cosine: linear warmup, then cosine from 1 down to `floor` at the last step.
    constant: linear warmup, then 1.
    wsd (warmup-stable-decay): warmup, 1 until the last `decay_ratio` of steps, then linear to `floor`.
    """
    warmup = math.ceil(warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = (step - warmup) / max(total - warmup - 1, 1)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    if kind == "wsd":
        decay_start = total - max(1, round(decay_ratio * total))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / (total - decay_start)
        return 1 - (1 - floor) * min(progress, 1.0)
    raise ValueError(f"unknown schedule {kind!r} (cosine, constant, wsd)")


class Schedule:
    """The LR of each optimizer step of a stage, set on the optimizer's parameter groups.

    Handed to DeepSpeed as its `lr_scheduler`: the engine calls `step()` after each optimizer step and
    saves `state_dict()` in every checkpoint (restored by `load_state_dict` on resume). The LR of a step
    is a function of the step and the config alone, planned restarts included (`schedule.restarts`), so
    a run interrupted anywhere follows the schedule of one that never was. The state is the step
    reached, the peak LR of each group, the LRs in use, and the restarts the steps taken followed.
    """

    def __init__(
        self,
        optimizer,
        config: ScheduleConfig,
        peak_lr: float,
        total_steps: int,
        anneal_steps: int = 0,
        scale=None,
    ):
        self.optimizer = optimizer
        self.config = config
        self.floor = config.min_lr / peak_lr
        self.total_steps = total_steps  # the stage's steps, even when the run stops early
        # the last `anneal_steps` decay linearly from the LR the schedule had reached to zero at the last step
        # (Llama 3's annealing); `scale(step)`: a factor on every step's LR (a batch ramp's sqrt rule)
        self.anneal_steps = min(anneal_steps, total_steps)
        self.scale = scale
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0  # optimizer steps taken: the LRs set now are those of this step
        late = [r for r in config.restarts if r >= total_steps]
        if late:
            log.warning("schedule.restarts %s: past the stage's %d steps, never reached", late, total_steps)
        self._set_lrs(self._lrs_at(0))

    def multiplier(self, step: int) -> float:
        """The LR of optimizer step `step` as a fraction of the peak."""
        anneal = self.total_steps - self.anneal_steps
        if self.anneal_steps and step >= anneal:
            value = self._multiplier(anneal, self.config.restarts) * (self.total_steps - 1 - step)
            value /= self.anneal_steps
        else:
            value = self._multiplier(step, self.config.restarts)
        return value * self.scale(step) if self.scale else value

    def _multiplier(self, step: int, restarts: list[int]) -> float:
        earlier = [r for r in restarts if r <= step]
        start = earlier[-1] if earlier else 0
        if start and self.config.restart == "constant":
            # held at the LR the schedule (with the restarts before this one) had reached there
            return self._multiplier(start, earlier[:-1])
        # from step 0, or after a rewarm a new warmup and decay over the steps left of the stage
        c = self.config
        return lr_multiplier(
            step - start, self.total_steps - start, c.kind, c.warmup_ratio, self.floor, c.decay_ratio
        )

    def _lrs_at(self, step: int) -> list[float]:
        return [base * self.multiplier(step) for base in self.base_lrs]

    def _set_lrs(self, lrs: list[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.lrs = lrs

    def step(self) -> None:
        """Move to the next optimizer step's LR (DeepSpeed calls this after each optimizer step)."""
        self.step_count += 1
        self._set_lrs(self._lrs_at(self.step_count))

    def get_last_lr(self) -> list[float]:
        """The LR of each parameter group for the step about to be taken."""
        return list(self.lrs)

    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "base_lrs": list(self.base_lrs),
            "lrs": list(self.lrs),
            "restarts": list(self.config.restarts),
            "restart": self.config.restart,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's schedule. The optimizer's own state brings back the LRs its groups
        had, so they are not set here; only what `get_last_lr` reports and the next `step` uses.

        The restarts at or before the restored step shaped the LRs already used (the restored ones
        included) and must be the config's; those after it are planned, and come from the config."""
        if "last_epoch" in state:  # a checkpoint of the releases that kept a torch LambdaLR
            state = {"step": state["last_epoch"], "base_lrs": state["base_lrs"], "lrs": state["_last_lr"]}
        if "restarts" in state:
            restarts, mode = [int(r) for r in state["restarts"]], str(state["restart"])
        else:  # the releases whose `schedule.on_resume` re-anchored the schedule at the step resumed at
            anchor = int(state.get("restart_step", 0))
            restarts, mode = ([anchor] if anchor else []), str(state.get("restart_mode", "continue"))
        step = int(state["step"])
        taken = [r for r in restarts if r <= step]
        planned = [r for r in self.config.restarts if r <= step]
        if taken != planned or (taken and mode != self.config.restart):
            raise ValueError(
                f"schedule.restarts differ from the checkpoint's for steps already taken (up to step {step}, "
                f"the checkpoint has {taken or 'none'}{f' {mode}' if taken else ''}, the config "
                f"{planned or 'none'}{f' {self.config.restart}' if planned else ''}): set schedule.restarts "
                "and schedule.restart as the run had them"
            )
        self.step_count = step
        self.base_lrs = list(state["base_lrs"])
        self.lrs = list(state["lrs"])

    def __repr__(self) -> str:
        return f"Schedule({self.config.kind}, {self.total_steps} steps, at step {self.step_count})"
