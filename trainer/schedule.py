"""Learning-rate schedules as multipliers of the peak LR, pure functions of the step.

Being functions of the step alone, a resumed run continues its schedule exactly (no re-warming on the
same data: Gupta et al. 2023), and a new stage started with `--init-from` re-warms and re-decays
(Ibrahim et al. 2024).
"""

from __future__ import annotations

import math


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
