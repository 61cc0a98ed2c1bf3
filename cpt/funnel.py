"""The funnel: for each step, documents in, kept, and removed by reason, built from datatrove's stats.

Every datatrove task saves its steps' stats in `<logging_dir>/stats/<rank>.json`; summing those files
(rather than reading the `stats.json` of the last launch) gives the whole run even after a resume,
when only the remaining tasks ran. Readers chained at the head of a pipeline are merged into one
`read` row. For every row, `in == kept + sum(removed)`; `check()` raises if that ever fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cpt.io import read_json, write_text

# stats keys that count documents removed without a `dropped_<reason>` twin
_REASONLESS_DROP = "filtered"


def add_stats(step, labels, values) -> None:
    """`step.stat_update(label, value=v)` for every v of `values` (a sequence of numbers), for each label,
    merged in at once: total, count, mean, spread, min and max as the calls one by one would leave them.
    A call per document was a tenth of `tokenize`'s time."""
    import numpy as np
    from datatrove.utils.stats import MetricStats

    x = np.asarray(values)
    if not len(x):
        return
    mean = float(x.mean())
    merged = MetricStats(
        total=x.sum().item(),
        n=len(x),
        mean=mean,
        min=x.min().item(),
        max=x.max().item(),
        _running_variance=float(((x - mean) ** 2).sum()),
    )
    for label in labels:
        step.stats[label] = step.stats[label] + merged


@dataclass
class FunnelRow:
    step: str
    docs_in: int
    kept: int
    removed: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # extra counts (redactions, output files)

    @property
    def removed_total(self) -> int:
        return sum(self.removed.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "removed_total": self.removed_total}


@dataclass
class Funnel:
    rows: list[FunnelRow]
    tasks_done: int
    tasks_total: int
    outputs: dict[str, int] = field(default_factory=dict)  # language -> documents written
    pipeline: str = ""  # clean, dedup, score: how a report names it
    languages: dict[str, list[FunnelRow]] = field(default_factory=dict)  # per-language rows (dedup)
    warnings: list[str] = field(default_factory=list)  # what a user must look at, e.g. many timeouts

    def check(self) -> None:
        """Raise if any step's documents in differ from kept + removed, or a step loses documents."""
        for row in self.rows:
            if row.docs_in != row.kept + row.removed_total:
                raise AssertionError(
                    f"funnel not conserved at {row.step}: in {row.docs_in} != kept {row.kept} + removed {row.removed_total}"
                )
        for prev, row in zip(self.rows, self.rows[1:], strict=False):
            if row.docs_in != prev.kept:
                raise AssertionError(
                    f"{row.step} received {row.docs_in} documents but {prev.step} kept {prev.kept}"
                )

    def to_json(self) -> str:
        data = {
            "tasks_done": self.tasks_done,
            "tasks_total": self.tasks_total,
            "steps": [r.to_dict() for r in self.rows],
            "outputs": self.outputs,
            "pipeline": self.pipeline,
            "warnings": self.warnings,
        }
        if self.languages:
            data["languages"] = {lang: [r.to_dict() for r in rows] for lang, rows in self.languages.items()}
        return json.dumps(data, indent=2, ensure_ascii=False)

    def save(self, path: str | Path) -> None:
        write_text(path, self.to_json() + "\n")

    def table(self) -> str:
        """A plain-text table: one line per step, then its removal reasons, largest first."""
        width = max(
            [len(r.step) for r in self.rows] + [len(k) + 4 for r in self.rows for k in r.removed] + [8]
        )
        lines = [f"{'step':<{width}}  {'in':>9}  {'kept':>9}  {'removed':>9}  {'kept %':>7}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            pct = f"{100 * r.kept / r.docs_in:.1f}" if r.docs_in else "-"
            lines.append(f"{r.step:<{width}}  {r.docs_in:>9,}  {r.kept:>9,}  {r.removed_total:>9,}  {pct:>7}")
            for reason, n in sorted(r.removed.items(), key=lambda kv: (-kv[1], kv[0])):
                lines.append(f"{'  - ' + reason:<{width}}  {'':>9}  {'':>9}  {n:>9,}")
        if self.outputs:
            written = ", ".join(f"{lang}: {n:,}" for lang, n in sorted(self.outputs.items()))
            lines.append(f"written by language: {written}")
        if self.tasks_done < self.tasks_total:
            lines.append(f"(partial: {self.tasks_done}/{self.tasks_total} tasks finished)")
        return "\n".join(lines)


def loss_warning(
    row: FunnelRow, reasons: dict[str, str], threshold: float = 0.01, what: str = "documents"
) -> str | None:
    """One line when more than `threshold` of a step's input was removed for `reasons` (reason -> the
    setting that governs it): losses that say more about the run's settings than about the data."""
    counts = {r: row.removed.get(r, 0) for r in reasons if row.removed.get(r, 0)}
    lost = sum(counts.values())
    if not row.docs_in or lost <= threshold * row.docs_in:
        return None
    detail = ", ".join(f"{n:,} {r}" for r, n in counts.items())
    settings = " or ".join(dict.fromkeys(reasons[r] for r in counts))
    return (
        f"{lost:,} of {row.docs_in:,} {what} ({100 * lost / row.docs_in:.1f}%) were dropped at {row.step} "
        f"({detail}), over {100 * threshold:g}%: raise {settings} if they are not pathological"
    )


def task_totals(logging_dir: str | Path) -> tuple[list[dict[str, int]], list[Path]]:
    """Every step's counts summed over the tasks that finished (one entry per step), and their stats files."""
    from datatrove.utils.stats import PipelineStats, Stats

    stats_dir = Path(logging_dir) / "stats"
    files = sorted(stats_dir.glob("*.json")) if stats_dir.is_dir() else []
    run: PipelineStats | None = None
    for f in files:
        task = PipelineStats.from_json(read_json(f))
        if run is not None:  # datatrove's `+` would cut the longer list short and assert on a name
            _check_same_steps(f, task, run)
        # Stats.from_dict keeps the saved values raw (a count or a dict) until `+` makes them MetricStats,
        # so the sum starts from empty steps
        run = (run or PipelineStats([Stats(s.name) for s in task.stats])) + task
    totals = (
        [{key: int(value.total) for key, value in step.stats.items()} for step in run.stats] if run else []
    )
    return totals, files


def _check_same_steps(path: Path, task, run) -> None:
    if len(task.stats) != len(run.stats):
        raise ValueError(
            f"{path}: {len(task.stats)} steps, other tasks have {len(run.stats)} (was the pipeline changed?)"
        )
    for i, (mine, other) in enumerate(zip(task.stats, run.stats, strict=True)):
        if mine.name != other.name:
            raise ValueError(
                f"{path}: step {i} is {mine.name!r}, other tasks have {other.name!r} (was the pipeline changed?)"
            )


def step_totals(logging_dir: str | Path, step_index: int) -> tuple[dict[str, int], int]:
    """Counts of one step summed over the tasks that finished, and how many tasks that was."""
    totals, files = task_totals(logging_dir)
    return (totals[step_index] if totals else {}), len(files)


def row_from_stats(step: str, stats: dict, reasonless: str = _REASONLESS_DROP) -> FunnelRow:
    """One funnel row from a datatrove step's stats dict ({key: {"total": n, ...} or n}).

    Documents a step dropped without a `dropped_<reason>` count are put under `reasonless`.
    """
    counts = {k: int(v["total"] if isinstance(v, dict) else v) for k, v in stats.items()}
    docs_in = counts.get("total", 0)
    kept = counts.get("forwarded", docs_in if "dropped" not in counts else docs_in - counts["dropped"])
    removed = {k.removeprefix("dropped_"): n for k, n in counts.items() if k.startswith("dropped_") and n}
    untold = counts.get("dropped", 0) - sum(removed.values())
    if untold > 0:
        removed[reasonless] = untold
    counters = {
        k: n
        for k, n in counts.items()
        if k.startswith(("redacted_", "retried_", "rerouted_", "repaired_")) or k == "lines_removed"
    }
    return FunnelRow(step, docs_in, kept, removed, counters)


def merge_rows(step: str, rows: list[FunnelRow]) -> FunnelRow:
    merged = FunnelRow(step, 0, 0)
    for r in rows:
        merged.docs_in += r.docs_in
        merged.kept += r.kept
        for key, n in r.removed.items():
            merged.removed[key] = merged.removed.get(key, 0) + n
        for key, n in r.counters.items():
            merged.counters[key] = merged.counters.get(key, 0) + n
    return merged


def build_funnel(
    logging_dir: str | Path, step_names: list[str], tasks_total: int, n_readers: int = 1, pipeline: str = ""
) -> Funnel:
    """Sum every task's saved stats; `step_names` names the pipeline's steps in order."""
    totals, files = task_totals(logging_dir)
    if totals and len(totals) != len(step_names):
        raise ValueError(
            f"{logging_dir}: {len(totals)} steps, expected {len(step_names)} (was the pipeline changed?)"
        )
    totals = totals or [{} for _ in step_names]
    outputs: dict[str, int] = {}
    for key, n in totals[-1].items():  # the writer counts documents per output-file template
        if key.endswith(".parquet.tmp") and "/" in key:
            lang = key.split("/", 1)[0]
            outputs[lang] = outputs.get(lang, 0) + n
    rows = [row_from_stats(name, t) for name, t in zip(step_names, totals, strict=True)]
    if n_readers > 1:
        rows = [merge_rows("read", rows[:n_readers]), *rows[n_readers:]]
    elif rows:
        rows[0].step = "read"
    return Funnel(rows, len(files), tasks_total, outputs, pipeline=pipeline)
