"""Needle in a haystack (passkey retrieval) from the run's own held-out text: can the model still find a
fact at every depth of a long context, before and after a stage that changes its context length?

A case is a haystack of held-out documents (in order, from a seeded first one), a passkey sentence
hidden at `depth`% of it and the question at the end, `length` tokens in all. The model answers by
greedy generation; it is right when its first tokens are the passkey's. A trial keeps its passkey and
haystack at every length and depth, so a cell differs from another only by where the needle sits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


class NeedleError(ValueError):
    """A needle check that cannot be built, with a one-line message naming the folder or the length."""


@dataclass(frozen=True)
class Case:
    length: int  # prompt tokens
    depth: int  # % of the haystack before the needle
    trial: int
    key: str  # the passkey, 5 digits
    ids: list[int]  # the prompt: [BOS] haystack with the needle inside, then the question
    answer_ids: list[int]  # the key's tokens, as they stand in the needle
    needle_at: int  # index in `ids` where the needle sentence starts


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _needle_pieces(tokenizer, key: str) -> tuple[list[int], list[int]]:
    """The needle's ids and the key's: the sentence is encoded piece by piece around the key, so the key's
    ids in it are exactly the ones the answer is compared with."""
    answer = _encode(tokenizer, f" {key}")
    before, middle, after = NEEDLE.split(" {key}")  # the key keeps its space, as the answer has it
    ids = (
        _encode(tokenizer, before) + answer + _encode(tokenizer, middle) + answer + _encode(tokenizer, after)
    )
    return ids, answer


def _overhead(tokenizer, key: str) -> int:
    """Prompt tokens that are not haystack: BOS, the needle and the question."""
    bos = 1 if getattr(tokenizer, "bos_token_id", None) is not None else 0
    return bos + len(_needle_pieces(tokenizer, key)[0]) + len(_encode(tokenizer, QUESTION))


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name, None) is not None:
            ids.add(getattr(tokenizer, name))
    return ids


def _haystack(shards, first: int, need: int, special: set[int], folder: Path) -> np.ndarray:
    """`need` tokens of documents from `first` on, in order (wrapping to the first document, each read
    once), without their BOS/EOS: one running text, as the model reads a long document."""
    pieces, have = [], 0
    for i in range(len(shards)):
        doc = shards.document((first + i) % len(shards)).astype(np.int64)
        doc = doc[~np.isin(doc, list(special))] if special else doc
        pieces.append(doc)
        have += len(doc)
        if have >= need:
            return np.concatenate(pieces)[:need]
    raise NeedleError(
        f"{folder}: held-out text too short for the needle check: {have:,} tokens of text, a haystack of "
        f"{need:,} needed (use a larger eval set, or smaller eval.needle.lengths)"
    )


def build_cases(
    folder: str | Path,
    tokenizer,
    lengths: Sequence[int],
    depths: Sequence[int],
    trials: int,
    seed: int = 0,
) -> list[Case]:
    """Every (length, depth, trial) case from the held-out token shards in `folder` (as `run.py tokenize`
    writes them); the same seed gives the same cases."""
    from cpt.tokens import TokenShards

    folder = Path(folder)
    shards = TokenShards(folder)  # read_manifest + check_files: a damaged set is a TokenShardError
    if not len(shards):
        raise NeedleError(f"{folder}: no held-out documents for the needle check")
    bad = [d for d in depths if not 0 <= d <= 100]
    if bad or trials < 1 or not lengths or not depths:
        raise NeedleError(f"needle check: depths within [0, 100], trials >= 1 (got {list(depths)}, {trials})")
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    question = _encode(tokenizer, QUESTION)
    special = _special_ids(tokenizer)
    cases = []
    for trial in range(trials):
        rng = np.random.default_rng([seed, trial])  # a trial's key and haystack, the same in every cell
        key = str(int(rng.integers(10_000, 100_000)))
        needle, answer = _needle_pieces(tokenizer, key)
        fixed = len(bos) + len(needle) + len(question)
        short = [n for n in lengths if n <= fixed]
        if short:
            raise NeedleError(
                f"needle check: length {short[0]} is too short: the needle and the question alone take "
                f"{fixed} tokens"
            )
        hay = _haystack(shards, int(rng.integers(len(shards))), max(lengths) - fixed, special, folder)
        for length in lengths:
            size = length - fixed
            for depth in depths:
                cut = round(size * depth / 100)
                ids = bos + hay[:cut].tolist() + needle + hay[cut:size].tolist() + question
                cases.append(Case(length, depth, trial, key, ids, answer, len(bos) + cut))
    return cases


Generate = Callable[[list[list[int]], int], list[list[int]]]


def score(generate: Generate, cases: list[Case]) -> dict[str, float]:
    """Accuracy of every (length, depth) as needle/L<length>/d<depth>, and over all cases as
    needle/accuracy; `generate(prompts, max_new_tokens)` gives each prompt's generated ids."""
    if not cases:
        return {}
    longest = max(len(c.answer_ids) for c in cases)
    outputs = generate([c.ids for c in cases], longest)
    cells: dict[str, list[bool]] = {}
    for case, out in zip(cases, outputs, strict=True):
        right = [int(t) for t in list(out)[: len(case.answer_ids)]] == case.answer_ids
        cells.setdefault(f"needle/L{case.length}/d{case.depth}", []).append(right)
    result = {k: sum(v) / len(v) for k, v in cells.items()}
    result["needle/accuracy"] = sum(sum(v) for v in cells.values()) / len(cases)
    return result


def model_generate(model, device, pad_id: int = 0) -> Generate:
    """`generate` for `score` over a Hugging Face causal LM: greedy, one prompt at a time (they differ in
    length, so no padding), in eval mode, restored after."""
    import torch

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        training = model.training
        model.eval()
        outputs = []
        try:
            with torch.no_grad():
                for ids in prompts:
                    x = torch.tensor([ids], dtype=torch.long, device=device)
                    out = model.generate(
                        input_ids=x,
                        attention_mask=torch.ones_like(x),
                        max_new_tokens=max_new_tokens,
                        # always as many tokens: under ZeRO-3 every rank takes the same forward passes
                        min_new_tokens=max_new_tokens,
                        do_sample=False,
                        num_beams=1,
                        use_cache=True,
                        pad_token_id=pad_id,
                    )
                    outputs.append(out[0, x.shape[1] :].tolist())
        finally:
            model.train(training)
        return outputs

    return generate


_CASES: dict[tuple, list[Case]] = {}  # built once a run: the same cases at every evaluation


def in_training(model, tokenizer, cfg, folder: str | Path, seq_len: int, device, pad_id: int = 0) -> dict:
    """The needle metrics of `model` for the trainer's evaluation (`cfg`: eval.needle)."""
    return score(model_generate(model, device, pad_id), cases(tokenizer, cfg, folder, seq_len))


def cases(tokenizer, cfg, folder: str | Path, seq_len: int) -> list[Case]:
    """The run's cases, built once (the trainer builds them before any work, so a held-out set too short
    for them is one line then): lengths default to 1/4, 1/2 and all of `seq_len` (those too short for the
    needle left out)."""
    lengths = sorted(set(cfg.lengths))
    if not lengths:
        fixed = _overhead(tokenizer, "99999")
        wanted = sorted({seq_len // 4, seq_len // 2, seq_len})
        lengths = [n for n in wanted if n > fixed]
        if len(lengths) < len(wanted):
            log.warning("needle check: lengths %s left out (the needle and the question take %d tokens)",
                        [n for n in wanted if n <= fixed], fixed)  # fmt: skip
        if not lengths:
            raise NeedleError(
                f"needle check: seq_len {seq_len} is too short: the needle and the question take {fixed} "
                "tokens"
            )
    too_long = [n for n in lengths if n > seq_len]
    if too_long:
        raise NeedleError(f"eval.needle.lengths: {too_long[0]} is longer than the stage's seq_len {seq_len}")
    key = (str(Path(folder).resolve()), tuple(lengths), tuple(cfg.depths), cfg.trials, cfg.seed,
           getattr(tokenizer, "name_or_path", id(tokenizer)), len(tokenizer))  # fmt: skip
    if key not in _CASES:
        _CASES[key] = build_cases(folder, tokenizer, lengths, cfg.depths, cfg.trials, cfg.seed)
    return _CASES[key]
