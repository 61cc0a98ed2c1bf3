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

from trainer.config import ScheduleConfig

log = logging.getLogger(__name__)


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

    def __init__(self, optimizer, config: ScheduleConfig, peak_lr: float, total_steps: int):
        self.optimizer = optimizer
        self.config = config
        self.floor = config.min_lr / peak_lr
        self.total_steps = total_steps  # the stage's steps, even when the run stops early
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0  # optimizer steps taken: the LRs set now are those of this step
        late = [r for r in config.restarts if r >= total_steps]
        if late:
            log.warning("schedule.restarts %s: past the stage's %d steps, never reached", late, total_steps)
        self._set_lrs(self._lrs_at(0))

    def multiplier(self, step: int) -> float:
        """The LR of optimizer step `step` as a fraction of the peak."""
        return self._multiplier(step, self.config.restarts)

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
