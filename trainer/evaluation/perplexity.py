"""Held-out perplexity of each evaluation set: the old domain (forgetting) beside the new (learning)."""

from __future__ import annotations

import math

import torch

from cpt.data.loader import heldout_batches
from trainer.config import EvalSet
from trainer.model import token_losses


@torch.no_grad()
def evaluate(model, sets: list[EvalSet], seq_len: int, batch_size: int, device, pad_id: int = 0) -> dict:
    """{eval/<set>/loss, eval/<set>/ppl} over the first `sequences` packed sequences of each set, packed to
    the set's own `seq_len` when it has one (a long stage's short-context perplexity), else to `seq_len`.

    Every rank evaluates the same sequences (sets are small), so ZeRO-3's collective forward passes
    line up and no reduction is needed."""
    was_training = model.training
    model.eval()
    results = {}
    for s in sets:
        total, count = 0.0, 0
        for batch in heldout_batches(s.path, s.seq_len or seq_len, s.sequences, batch_size, pad_id):
            losses, mask = token_losses(model, batch, device)
            total += losses.sum().item()
            count += int(mask.sum().item())
        loss = total / max(count, 1)
        results[f"eval/{s.name}/loss"] = loss
        results[f"eval/{s.name}/ppl"] = math.exp(min(loss, 50.0))
    if was_training:
        model.train()
    return results
