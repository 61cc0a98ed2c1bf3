"""A training stage, as a `mixes/*.yaml` file declares it: sources, weights, budget, replay."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from cpt.config import ConfigError, build, parse_yaml, read_yaml, show

PLAIN_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")  # a stage name: the folder its manifest goes to
MIN_SEQ_LEN = 8


@dataclass
class Source:
    name: str = ""
    path: str = ""  # a token-shard folder (with tokens.json) or a glob of such folders
    weight: float | None = None  # share of the non-replay budget, normalised over the sources
    tokens: int | None = None  # or a fixed number of tokens
    max_epochs: float = 4.0  # data-constrained scaling (Muennighoff et al. 2023): little gain past ~4
    packing: Literal["concat", "same_type"] = "concat"
    type: str | None = None  # same-type packing only packs sources of the same type together
    # select among the token-shard folders under `path` by their labels (`run.py tokenize --split-by`):
    # "topic in [math, science]" or "topic == math"
    where: str | None = None
    # only documents of at least this many tokens (EOS included, as the index counts them): a long-context
    # stage (Llama 3's) is then made of long documents, not of short pages packed together; 0: all of them
    min_tokens: int = 0

    def condition(self) -> tuple[str, list[str]] | None:
        """(key, allowed values) of `where`; ValueError when it cannot be read."""
        if self.where is None:
            return None
        m = re.fullmatch(r"\s*(\w+)\s*(==|in)\s*(.+?)\s*", self.where)
        if not m:
            raise ValueError(f"{self.where!r} is not `KEY in [a, b]` or `KEY == a`")
        key, op, raw = m.groups()
        if op == "==":
            return key, [raw.strip("'\"")]
        try:
            values = parse_yaml(raw)
        except yaml.YAMLError:
            values = None
        if not isinstance(values, list) or not values:
            raise ValueError(f"{self.where!r}: `in` takes a list such as [math, science]")
        return key, [str(v) for v in values]


@dataclass
class Replay:
    share: float = 0.0  # share of the stage's tokens taken from earlier-domain data
    sources: list[Source] = field(default_factory=list)


@dataclass
class Stage:
    name: str = ""
    seq_len: int = 0
    tokens: int = 0  # the stage's token budget
    seed: int = 0
    # the trainer decays the LR linearly to zero over the stage's last `anneal_tokens` (Llama 3's
    # annealing); 0: the schedule runs as configured to the end
    anneal_tokens: int = 0
    sources: list[Source] = field(default_factory=list)
    replay: Replay = field(default_factory=Replay)

    def validate(self) -> list[str]:
        problems = []
        if not self.name:
            problems.append("name: missing")
        elif not PLAIN_NAME.fullmatch(self.name) or set(self.name) == {"."}:
            # it names the manifest's folder (runs/mixes/<name>): a path here would write elsewhere
            problems.append(f"name: {show(self.name)} must be a plain name (letters, digits, '-', '_', '.')")
        if not isinstance(self.seq_len, int) or self.seq_len < MIN_SEQ_LEN:
            # a sequence of one token has nothing to predict: the loss would be 0
            problems.append(f"seq_len: must be an integer >= {MIN_SEQ_LEN} (got {show(self.seq_len)})")
        if not isinstance(self.tokens, int) or self.tokens <= 0:
            problems.append(f"tokens: the stage's budget must be a positive integer (got {self.tokens!r})")
        if _integer(self.anneal_tokens) and _integer(self.tokens):
            if not 0 <= self.anneal_tokens <= self.tokens:
                problems.append(
                    f"anneal_tokens: must be within [0, tokens] ({self.tokens:,}), the tokens the LR decays "
                    f"to zero over at the end of the stage (got {self.anneal_tokens:,})"
                )
        if not self.sources:
            problems.append("sources: at least one source is needed")
        if not 0 <= self.replay.share < 1:
            problems.append(f"replay.share: must be within [0, 1) (got {self.replay.share})")
        if self.replay.share > 0 and not self.replay.sources:
            problems.append("replay.sources: a replay share needs replay sources")
        for where, sources in (("sources", self.sources), ("replay.sources", self.replay.sources)):
            names = [s.name for s in sources]
            for i, s in enumerate(sources):
                key = f"{where}[{i}]"
                if not s.name:
                    problems.append(f"{key}.name: missing")
                elif names.count(s.name) > 1:
                    problems.append(f"{key}.name: {s.name!r} used twice")
                if not s.path:
                    problems.append(f"{key}.path: missing")
                if (s.weight is None) == (s.tokens is None) and where == "sources":
                    problems.append(f"{key}: give exactly one of weight or tokens")
                if s.weight is not None and s.weight <= 0:
                    problems.append(f"{key}.weight: must be > 0 (got {s.weight})")
                if s.tokens is not None and s.tokens <= 0:
                    problems.append(f"{key}.tokens: must be > 0 (got {s.tokens})")
                if s.max_epochs <= 0:
                    problems.append(f"{key}.max_epochs: must be > 0 (got {s.max_epochs})")
                if _integer(s.min_tokens) and s.min_tokens < 0:
                    problems.append(
                        f"{key}.min_tokens: must be a number of tokens >= 0 (0: every document; got "
                        f"{s.min_tokens})"
                    )
                if s.packing == "same_type" and not s.type:
                    problems.append(f"{key}.type: same_type packing needs a type tag")
                try:
                    s.condition()
                except ValueError as e:
                    problems.append(f"{key}.where: {e}")
        return problems


def _integer(value) -> bool:
    """An int that is no bool; a value of another type is reported by `build` before `validate` runs."""
    return isinstance(value, int) and not isinstance(value, bool)


def load_stage(path: str | Path) -> Stage:
    """Read and validate a stage file; every problem is reported at once, naming the file and key."""
    path = Path(path)
    stage = build(Stage, read_yaml(path), str(path))
    base = path.resolve().parent
    for s in [*stage.sources, *stage.replay.sources]:
        if s.path and not Path(s.path).is_absolute() and not Path(s.path).exists():
            candidate = base / s.path
            if any(candidate.parent.glob(candidate.name)):
                s.path = str(candidate)
    return stage


__all__ = ["ConfigError", "Replay", "Source", "Stage", "load_stage"]
