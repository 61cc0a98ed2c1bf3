"""Learning-rate schedules: `lr_multiplier`, a pure function of the step, and `Schedule`, the object that
sets each optimizer step's LR from it and whose state every checkpoint keeps.

Being a function of the step alone, a resumed run continues its schedule exactly (no re-warming on the
same data: Gupta et al. 2023), and a new stage started with `--init-from` re-warms and re-decays
(Ibrahim et al. 2024).
"""

from __future__ import annotations

import math

from trainer.config import ScheduleConfig


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
    saves `state_dict()` in every checkpoint (restored by `load_state_dict` on resume). The state is
    the step reached, the peak LR of each group, the LRs in use, and the step the schedule restarted
    from when a resume re-anchored it (`schedule.on_resume`: rewarm or constant; 0 when it never was).
    """

    def __init__(self, optimizer, config: ScheduleConfig, peak_lr: float, total_steps: int):
        self.optimizer = optimizer
        self.config = config
        self.floor = config.min_lr / peak_lr
        self.total_steps = total_steps  # the stage's steps, even when the run stops early
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.step_count = 0  # optimizer steps taken: the LRs set now are those of this step
        self.restart_step = 0
        self.restart_mode = "continue"  # how the schedule restarted at restart_step: rewarm or constant
        self._set_lrs(self._lrs_at(0))

    def multiplier(self, step: int) -> float:
        """The LR of optimizer step `step` as a fraction of the peak."""
        start = self.restart_step
        if start and self.restart_mode == "constant":
            step, start = start, 0  # held at the LR of the step the run resumed at
        # from step 0, or after a rewarm a new warmup and decay over the steps after `start`
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

    def on_resume(self, step: int) -> bool:
        """Apply `schedule.on_resume` to a run resumed at `step`: with rewarm or constant, re-anchor the
        schedule there and set the LRs it gives; with continue, leave the restored state as it is.
        Whether the LRs changed."""
        if self.config.on_resume == "continue" or not step:
            return False
        self.restart_step, self.restart_mode = step, self.config.on_resume
        self._set_lrs(self._lrs_at(step))
        return True

    def state_dict(self) -> dict:
        return {
            "step": self.step_count,
            "base_lrs": list(self.base_lrs),
            "lrs": list(self.lrs),
            "restart_step": self.restart_step,
            "restart_mode": self.restart_mode,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint's schedule. The optimizer's own state brings back the LRs its groups
        had, so they are not set here; only what `get_last_lr` reports and the next `step` uses."""
        if "last_epoch" in state:  # a checkpoint of the releases that kept a torch LambdaLR
            state = {"step": state["last_epoch"], "base_lrs": state["base_lrs"], "lrs": state["_last_lr"]}
        self.step_count = int(state["step"])
        self.base_lrs = list(state["base_lrs"])
        self.lrs = list(state["lrs"])
        self.restart_step = int(state.get("restart_step", 0))
        self.restart_mode = str(state.get("restart_mode", "continue"))

    def __repr__(self) -> str:
        return f"Schedule({self.config.kind}, {self.total_steps} steps, at step {self.step_count})"
