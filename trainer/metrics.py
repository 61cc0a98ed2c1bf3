"""Logging of a run: a JSONL file and TensorBoard (wandb when installed and asked for), rank 0 only.

Every record has the step, loss, loss per source, learning rate, gradient norm, tokens seen, tokens/s,
achieved TFLOP/s per device and MFU (when the device's peak is known), and evaluations add
`eval/<set>/loss` and `eval/<set>/ppl`. A resumed run appends: when a step appears twice in
`metrics.jsonl`, the later line is the one that counts (TensorBoard purges the overlap itself;
`cpt.report.collect.read_metrics` reads the file that way).
"""

from __future__ import annotations

import json
import math
from pathlib import Path


class RunLogger:
    def __init__(
        self, run_dir: str | Path, enabled: bool, tensorboard: bool, wandb: dict | None, start_step: int
    ):
        self.enabled = enabled
        self._tb = self._wandb = self._jsonl = None
        if not enabled:
            return
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115 (held open)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step or None)
        if wandb is not None:
            try:
                import wandb as wandb_module
            except ImportError:
                raise RuntimeError(
                    "log.wandb is true but wandb is not installed (pip install wandb)"
                ) from None
            self._wandb = wandb_module.init(
                project=wandb["project"], dir=str(run_dir), config=wandb["config"], resume="allow"
            )

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")
        self._jsonl.flush()
        for key, value in clean.items():
            if isinstance(value, (int, float)) and value is not None:
                if self._tb is not None:
                    self._tb.add_scalar(key, value, step)
        if self._tb is not None:
            self._tb.flush()
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
