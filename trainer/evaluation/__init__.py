"""Evaluation: held-out perplexity of the old and new domains (`perplexity`), benchmark accuracy through
lm-evaluation-harness (`benchmarks`, also `cpt eval`) and needle-in-a-haystack retrieval (`needle`).

`Evaluator` is what the training loop holds: built before any work (it loads the tokenizer the
benchmarks and the needle check need and checks that the held-out text makes the needle's haystacks),
it says when an evaluation is due and runs every one the config asks for."""

from __future__ import annotations

import torch

from trainer.config import TrainConfig
from trainer.evaluation.perplexity import evaluate


class Evaluator:
    """Evaluations every `eval.every` steps and at the run's last step (`last`), of the weights and, with
    an EMA, of their average; the benchmarks and the needle check of the weights."""

    def __init__(self, cfg: TrainConfig, seq_len: int, last: int):
        self.cfg, self.seq_len, self.last = cfg, seq_len, last
        self.enabled = bool(cfg.eval.sets or cfg.eval.benchmarks.tasks)
        self.tokenizer = None
        if cfg.eval.benchmarks.tasks or cfg.eval.needle.set:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.model.path, trust_remote_code=False)
        if (
            cfg.eval.needle.set
        ):  # its haystacks built now: held-out text too short for them is said before any work
            from trainer.evaluation import needle

            needle.cases(self.tokenizer, cfg.eval.needle, self.needle_folder(), seq_len)

    def needle_folder(self) -> str:
        """The held-out folder of the eval set the needle check cuts its haystacks from."""
        return next(s.path for s in self.cfg.eval.sets if s.name == self.cfg.eval.needle.set)

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return self.enabled and ((every and step % every == 0) or step == self.last)

    def run(self, engine, ema, device) -> dict:
        """Held-out loss and perplexity of every eval set, of the weights and (with `ema`) of their
        average; with `eval.benchmarks`, the benchmarks' accuracies of the weights."""
        cfg, seq_len = self.cfg, self.seq_len
        results = evaluate(engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id)
        if ema is not None:
            with ema.applied(engine.module):
                averaged = evaluate(
                    engine, cfg.eval.sets, seq_len, cfg.eval.batch_size, device, cfg.data.pad_id
                )
            results.update({k.replace("eval/", "eval_ema/", 1): v for k, v in averaged.items()})
        if cfg.eval.benchmarks.tasks:
            from trainer.evaluation import benchmarks

            world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
            # the ranks share the questions, except under ZeRO-3, where every forward pass needs all of them
            shard = (
                (torch.distributed.get_rank(), world)
                if world > 1 and cfg.deepspeed.zero_stage < 3
                else (0, 1)
            )
            results.update(
                benchmarks.in_training(engine.module, self.tokenizer, cfg.eval.benchmarks, device, shard)
            )
        if cfg.eval.needle.set:
            from trainer.evaluation import needle

            results.update(
                needle.in_training(
                    engine.module, self.tokenizer, cfg.eval.needle, self.needle_folder(), seq_len, device,
                    cfg.data.pad_id,
                )
            )  # fmt: skip
        return results
