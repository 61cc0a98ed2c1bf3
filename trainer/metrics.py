"""Logging of a run: a JSONL file and TensorBoard (wandb when installed and asked for), rank 0 only.

Every record has the step, loss, loss per source, learning rate, gradient norm, tokens seen, tokens/s,
achieved TFLOP/s per device, MFU (when the device's peak is known) and, on a GPU, `peak_memory_gib` (the
most the rank's device has held); evaluations add `eval/<set>/loss` and `eval/<set>/ppl`. A resumed run
first drops the lines of the steps after its checkpoint, which it redoes, so every step appears once in
`metrics.jsonl` (TensorBoard purges the overlap itself; `cpt.report.collect.read_metrics` still lets a
later line of a step win, for files of older runs).

`SourceLosses` sums the training loss between two log lines, overall and per source, on every rank;
`Throughput` measures tokens/s, TFLOP/s and MFU over the same steps, with evaluations and checkpoints
left out of the clock.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cpt.io import write_text
from trainer.model import flops_per_token
from trainer.schedule import Segment, segment_of


@dataclass
class WindowLoss:
    """The training loss since the last log line, over every rank: overall and per source."""

    loss: float
    by_source: dict[str, float]  # {"loss/<source>": loss}, only sources that had tokens


class SourceLosses:
    """Loss sums and target-token counts of the micro-batches since the last log line, in float64 on
    the device, overall and per manifest source (by the batch's per-token `source` ids: a packed
    sequence may hold documents of several same-type sources)."""

    def __init__(self, names: list[str], device):
        self.names = names
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.tokens = torch.zeros((), dtype=torch.float64, device=device)
        self.source_loss_sum = torch.zeros(len(names), dtype=torch.float64, device=device)
        self.source_tokens = torch.zeros(len(names), dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, losses: torch.Tensor, mask: torch.Tensor, source: torch.Tensor) -> None:
        """One micro-batch: per-token losses and the mask of tokens that count, (B, L-1), and the
        source id of every input token, (B, L), as the loader gives them."""
        losses, counted = losses.double(), mask.double()
        # the loss at position t predicts token t + 1: it belongs to that token's source
        target_source = source[:, 1:].to(self.source_tokens.device).reshape(-1)
        self.source_loss_sum.index_add_(0, target_source, losses.reshape(-1))
        self.source_tokens.index_add_(0, target_source, counted.reshape(-1))
        self.loss_sum += losses.sum()
        self.tokens += counted.sum()

    def reduce(self) -> WindowLoss:
        """Sum over ranks (every rank calls it) and start a new window."""
        k = len(self.names)
        # one all-reduce of all of them, as one buffer: the same sums in the same order on every run
        sums = torch.cat([self.loss_sum[None], self.tokens[None], self.source_loss_sum, self.source_tokens])
        dist.all_reduce(sums)
        loss_sum, tokens, source_loss_sum, source_tokens = sums.split([1, 1, k, k])
        window = WindowLoss(
            loss=(loss_sum[0] / tokens[0].clamp(min=1)).item(),
            by_source={
                f"loss/{name}": (source_loss_sum[i] / source_tokens[i]).item()
                for i, name in enumerate(self.names)
                if source_tokens[i] > 0
            },
        )
        for total in (self.loss_sum, self.tokens, self.source_loss_sum, self.source_tokens):
            total.zero_()
        return window


def _drop_redone(path: Path, start_step: int) -> None:
    """Keep the lines of the steps up to `start_step` (the checkpoint the run starts from): the steps
    after it, logged by a run that stopped before its next checkpoint, are redone and logged again. A
    fresh start (step 0) keeps none; a line cut by a kill is dropped. Rewritten whole, or not at all."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    kept = []
    for line in text.splitlines(keepends=True):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            continue
        if start_step > 0 and isinstance(step, int) and step <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if "".join(kept) != text:
        write_text(path, "".join(kept))


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
        _drop_redone(run_dir / "metrics.jsonl", start_step)
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
        """Flush and close every sink; a second call does nothing."""
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl = self._tb = self._wandb = None


class Throughput:
    """Tokens/s, achieved TFLOP/s per device and MFU (with a known peak) over the steps since the clock last
    started: at the last log line, evaluation or checkpoint, which do not count against it. Attention is
    counted as papers count it (the whole sequence) and as document masking computes it (`_docs`: the sum
    of the squared document pieces' lengths)."""

    def __init__(self, model_config, segments: list[Segment], world: int, peak: float | None, step: int):
        from deepspeed.accelerator import get_accelerator

        self.model_config, self.segments, self.world, self.peak = model_config, segments, world, peak
        self.accelerator = get_accelerator()
        self.restart(step)

    def restart(self, step: int) -> None:
        self.tick, self.tick_step, self.piece_squares = time.perf_counter(), step, 0.0

    def add(self, piece_squares: float) -> None:
        """A step's sum of squared piece lengths, over every rank."""
        self.piece_squares += piece_squares

    def figures(self, step: int, seq_len: int) -> dict:
        """The figures of the steps since the clock started, up to `step` (whose sequences are `seq_len`)."""
        elapsed = max(time.perf_counter() - self.tick, 1e-9)
        window_tokens = sum(
            segment_of(self.segments, k).batch * segment_of(self.segments, k).seq_len
            for k in range(self.tick_step, step)
        )
        tokens_per_s = window_tokens / elapsed
        flops = flops_per_token(self.model_config, seq_len)
        flops_docs = flops_per_token(self.model_config, self.piece_squares / max(window_tokens, 1))
        figures = {
            "tokens_per_s": tokens_per_s,
            "tflops_per_device": tokens_per_s * flops / self.world / 1e12,
            "tflops_per_device_docs": tokens_per_s * flops_docs / self.world / 1e12,
        }
        if self.peak:
            figures["mfu"] = tokens_per_s * flops / self.world / self.peak
            figures["mfu_docs"] = tokens_per_s * flops_docs / self.world / self.peak
        if self.accelerator.device_name() != "cpu":  # the most this rank's GPU has held since the run began
            figures["peak_memory_gib"] = self.accelerator.max_memory_allocated() / 2**30
        return figures
