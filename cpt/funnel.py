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


# a step's stats key counting the documents it passed on, by language and input file:
# "group<TAB>LANG<TAB>FILE" (LANG `-` before language ID ran; FILE relative to the run's input folder)
GROUP = "group\t"
NO_LANG = "-"


class GroupTally:
    """A pipeline element placed right after `step`: passes every document on and counts it in `step`'s
    own stats by its language and input file (`GROUP`), so that the funnel can be broken down by either.
    Not a PipelineStep: datatrove saves stats only of those, so the steps keep their places in the stats
    files. Documents without a `file_path` count under `-`."""

    def __init__(self, step, root: str | Path):
        self.step, self.root = step, str(root).rstrip("/") + "/"

    def __repr__(self) -> str:  # datatrove's log of the pipeline names every element
        return "    ↳ counted by language and input file (cpt)"

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        names: dict[str, str] = {}
        for doc in data or ():
            meta = doc.metadata
            path = meta.get("file_path") or ""
            name = names.get(path)
            if name is None:
                name = names[path] = path.removeprefix(self.root) if path else NO_LANG
            self.step.stat_update(f"{GROUP}{meta.get('lang') or NO_LANG}\t{name}")
            yield doc


def with_tallies(pipeline: list, n_readers: int, root: str | Path) -> list:
    """`pipeline` with a GroupTally after its last reader and after every later step."""
    out = list(pipeline[:n_readers])
    if out:
        out.append(GroupTally(out[-1], root))
    for step in pipeline[n_readers:]:
        out += [step, GroupTally(step, root)]
    return out


def _groups(stats: dict) -> dict[tuple[str, str], int]:
    """(language, input file) -> documents a step passed on, from its stats (`GroupTally`'s keys)."""
    found = {}
    for key, value in stats.items():
        if key.startswith(GROUP):
            lang, _, name = key[len(GROUP) :].partition("\t")
            found[(lang, name)] = int(value["total"] if isinstance(value, dict) else value)
    return found


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
    # documents each step passed on, by input file and by language (clean): {name: {step: n}}; a
    # language's steps start at language ID, where documents get one
    by_input: dict[str, dict[str, int]] = field(default_factory=dict)
    by_language: dict[str, dict[str, int]] = field(default_factory=dict)

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
        if self.by_input:
            data["by_input"] = self.by_input
            data["by_language"] = self.by_language
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
        lines += self._breakdown()
        if self.tasks_done < self.tasks_total:
            lines.append(f"(partial: {self.tasks_done}/{self.tasks_total} tasks finished)")
        return "\n".join(lines)

    def _breakdown(self, most: int = 10) -> list[str]:
        """Kept from read to write for each input file (the `most` that kept least, when there are more),
        and from language ID to write for each language; what removed most of each, by step."""
        if not self.by_input or not self.rows:
            return []
        steps = [r.step for r in self.rows]

        def line(name: str, counts: dict[str, int], first: str) -> str:
            start, end = counts.get(first, 0), counts.get(steps[-1], 0)
            chain = [counts.get(s, 0) for s in steps[steps.index(first) :]]
            losses = [
                (a - b, s) for a, b, s in zip(chain, chain[1:], steps[steps.index(first) + 1 :], strict=False)
            ]
            worst = max(losses, default=(0, ""))
            pct = f"{100 * end / start:.1f}" if start else "-"
            why = f"  most removed at {worst[1]} ({worst[0]:,})" if worst[0] > 0 else ""
            return f"  {name[:40]:<40}  {start:>9,}  {end:>9,}  {pct:>7}{why}"

        out = []
        files = sorted(
            self.by_input.items(),
            key=lambda kv: (kv[1].get(steps[-1], 0) / max(kv[1].get("read", 0), 1), kv[0]),
        )
        if len(files) > 1:  # one input file's breakdown is the table above
            out.append(f"by input file{'':<27}  {'read':>9}  {'written':>9}  {'kept %':>7}")
            out += [line(name, counts, "read") for name, counts in files[:most]]
        if len(files) > most:
            out.append(f"  ... {len(files) - most:,} more files (all in funnel.json: by_input)")
        if len(self.by_language) > 1:
            first = next((s for s in steps if any(s in c for c in self.by_language.values())), None)
            out.append(f"by language{'':<29}  {first or '':>9}  {'written':>9}  {'kept %':>7}")
            for lang, counts in sorted(self.by_language.items()):
                out.append(line(lang, counts, first))
        return out


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
        if k.startswith(("redacted_", "retried_", "rerouted_", "repaired_"))
        or k in ("lines_removed", "extract_fallback")
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
    funnel = Funnel(rows, len(files), tasks_total, outputs, pipeline=pipeline)
    # the readers' tally sits after the last one: its counts are the whole read row's
    step_groups = [_groups(totals[n_readers - 1]) if rows else {}] + [_groups(t) for t in totals[n_readers:]]
    for row, groups in zip(rows, step_groups, strict=True):
        for (lang, name), n in groups.items():
            by_input = funnel.by_input.setdefault(name, {})
            by_input[row.step] = by_input.get(row.step, 0) + n
            if lang != NO_LANG:
                by_lang = funnel.by_language.setdefault(lang, {})
                by_lang[row.step] = by_lang.get(row.step, 0) + n
    return funnel
