"""Find what a report shows in the folders it is given, by the files each part of cpt leaves behind.

- `report/funnel.json`: a pipeline's funnel (clean, dedup with its per-language rows, score);
- `manifest.json` with a `manifest_hash`: a stage manifest from `cpt-mix build`;
- `compression.json`: a `cpt-tok report --json` comparison of tokenizers;
- `metrics.jsonl`: a training run (with `run.json`: where its weights came from, its LR anneal and ramps);
- `ablation.json`: a `cpt ablate` grid (its own runs and mixes are read from that file, not listed again);
- `summary.json` with `tasks` and `languages`: a `cpt eval` of a model on MMLU / CMMLU / C-Eval.

Only these small files are read: no shard, checkpoint or TensorBoard event file is opened.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# folders that hold nothing a report shows, and can be large
_SKIP = {"checkpoints", "tensorboard", "logs", "stats", ".work", "removed", "init", "__pycache__"}


class ReportError(ValueError):
    """Bad report input, with a one-line message naming the folder or file."""


def read_metrics(run_dir: str | Path) -> dict[int, dict]:
    """A training run's metrics by step (the last line of a step wins: the resumed run's)."""
    by_step: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):
                break  # the last line of a run killed mid-write
            raise ReportError(f"{path}:{n}: not JSON ({e.msg})") from None
        by_step.setdefault(record["step"], {}).update(record)
    return by_step


@dataclass
class Run:
    path: Path
    metrics: dict[int, dict]
    origin: dict  # run.json: stage, manifest_hash, init_from (empty for runs older than run.json)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def init_from(self) -> Path | None:
        source = self.origin.get("init_from")
        return Path(source.partition(":")[0]).resolve() if source else None


_NEEDLE = re.compile(r"needle/L(\d+)/d(\d+)")


def needle_cells(record: dict) -> dict[tuple[int, int], float]:
    """The passkey accuracy of each (length, depth) an evaluation logged as needle/L<length>/d<depth>."""
    cells = {}
    for key, value in record.items():
        match = _NEEDLE.fullmatch(key)
        if match and value is not None:
            cells[int(match[1]), int(match[2])] = value
    return cells


def needle_steps(run: Run) -> list[int]:
    """The steps at which the run's evaluation ran the needle check."""
    return [step for step, record in sorted(run.metrics.items()) if needle_cells(record)]


@dataclass
class Found:
    funnels: list[tuple[Path, dict]] = field(default_factory=list)  # (output folder, funnel.json)
    manifests: list[tuple[Path, dict]] = field(default_factory=list)
    compression: list[tuple[Path, list[dict]]] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    ablations: list[tuple[Path, dict]] = field(default_factory=list)
    evals: list[tuple[Path, dict]] = field(default_factory=list)  # (cpt eval's output folder, summary.json)

    def empty(self) -> bool:
        return not (
            self.funnels or self.manifests or self.compression or self.runs or self.ablations or self.evals
        )


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


def collect(folders: list[str | Path]) -> Found:
    found = Found()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise ReportError(f"{folder}: no such folder")
        for root, dirs, files in os.walk(folder):
            root_path = Path(root)
            dirs[:] = sorted(d for d in dirs if d not in _SKIP and not d.endswith(".tmp"))
            if "ablation.json" in files:
                found.ablations.append((root_path, _load_json(root_path / "ablation.json")))
                dirs[:] = []  # its runs and mixes belong to the grid
                continue
            if root_path.name == "report" and "funnel.json" in files:
                found.funnels.append((root_path.parent, _load_json(root_path / "funnel.json")))
            if "manifest.json" in files:
                data = _load_json(root_path / "manifest.json")
                if isinstance(data, dict) and "manifest_hash" in data and "sources" in data:
                    found.manifests.append((root_path, data))
            if "compression.json" in files:
                found.compression.append((root_path, _load_json(root_path / "compression.json")))
            if "summary.json" in files:  # a common name: one that is not cpt eval's is passed over
                try:
                    data = json.loads((root_path / "summary.json").read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                    data = None
                if isinstance(data, dict) and {"model", "shots", "tasks", "languages"} <= set(data):
                    found.evals.append((root_path, data))
            if "metrics.jsonl" in files:
                origin = _load_json(root_path / "run.json") if "run.json" in files else {}
                found.runs.append(Run(root_path, read_metrics(root_path), origin))
    return found


def chains(runs: list[Run]) -> list[list[Run]]:
    """Runs in chains of stages, one chain per run that no other run started from: a run started
    `--init-from` another follows it (a base that several runs started from heads each of their chains)."""
    by_path = {r.path.resolve(): r for r in runs}
    parent_of: dict[Path, Path] = {}
    for r in runs:
        parent = r.init_from
        # --init-from names a run folder, or its checkpoints folder or one checkpoint in it
        while parent is not None and parent not in by_path:
            parent = parent.parent if parent.name.startswith(("checkpoints", "step_")) else None
        if parent is not None and parent != r.path.resolve():
            parent_of[r.path.resolve()] = parent
    has_followers = set(parent_of.values())
    result = []
    for r in sorted(runs, key=lambda r: str(r.path)):
        key = r.path.resolve()
        if key in has_followers:
            continue
        chain = [r]
        while key in parent_of and len(chain) <= len(runs):  # (a cycle cannot come from real runs)
            key = parent_of[key]
            chain.insert(0, by_path[key])
        result.append(chain)
    return result


def change_text(after: float, se_after: float | None, before: float, se_before: float | None) -> str:
    """An accuracy's change with the standard error of the difference (`+0.067 ± 0.081`), and
    `, within noise` when it is under two of them: on 60 questions a random model moves by ±0.06.

    The two estimates are taken as independent, which overstates the error of two evaluations of related
    models on the same questions: what is called significant is so."""
    delta = after - before
    if se_after is None or se_before is None:
        return f"{delta:+.3f}"
    se = math.hypot(se_after, se_before)
    return f"{delta:+.3f} ± {se:.3f}" + (", within noise" if abs(delta) < 2 * se else "")
