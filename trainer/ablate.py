"""`cpt ablate --grid mixes/ablations/forgetting.yaml`: a grid of short CPT runs from one base model,
each evaluated on old-domain and new-domain held-out text, to weigh forgetting against learning.

The grid file names a trainer config, a base (a model, optionally first trained on the old domain by
a base stage), the CPT stage every run trains on, and the axes to vary:

- `replay`: the stage's replay share (Ibrahim et al. 2024: replay lowers forgetting);
- `lr_scale`: a multiple of the config's peak LR and floor (a higher LR learns more and forgets more);
- `resume`: `continue`, `rewarm` or `constant`: each run stops half-way and resumes on the same data,
  its schedule continuing (the trainer's default), or restarting at the half-way step as planned from
  the start (`schedule.restarts: [HALF]`, `schedule.restart: rewarm` or `constant`, both parts with
  the same config): warming up and decaying again, or holding the LR it had reached (Gupta et al.
  2023: re-warming hurts).

With `mode: one_at_a_time` (the default) each axis is varied alone around `center`; `mode: product`
runs every combination. Every run is an ordinary trainer run (`trainer/main.py`, its own log, metrics
and checkpoints under OUTPUT/runs/NAME), started `--init-from` the base, so the grid is traced and
resumable like any run: a finished run is skipped when the grid is run again, an interrupted one
resumes from its checkpoint. The summary goes to OUTPUT/ablation.json, with whether each claim above
is reproduced at this size, and the report (forgetting against learning) to OUTPUT/report/.

With `eval.old_bench` and `eval.new_bench` (a task or a language of the trainer config's
`eval.benchmarks`, e.g. `mmlu` and `cmmlu`), each run also records the accuracy it starts and ends
with, forgetting as the fall of the old benchmark's accuracy and learning as the rise of the new one's,
and each claim is checked on accuracy as well as on loss.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cpt.config import ConfigError, build, read_yaml, show
from cpt.io import OutputError, output_lock, write_json
from cpt.mix.plan import MixError
from cpt.mix.stage import PLAIN_NAME
from cpt.report.collect import change_text, read_metrics

REPO = Path(__file__).resolve().parent.parent
AXES = ("replay", "lr_scale", "resume")
RESUME = ("continue", "rewarm", "constant")  # continue, or schedule.restart at the half-way step


@dataclass
class Base:
    model: str = ""  # the model every run starts from
    stage: str | None = None  # trained on this stage first (the old domain), or used as it is
    steps: int = 0


@dataclass
class EvalNames:
    old: str = ""  # the trainer config's eval set of the old domain (forgetting)
    new: str = ""  # and of the new one (learning)
    # optional: a task or language of the config's eval.benchmarks for each domain (mmlu / en, cmmlu / zh):
    # the findings are then also read on benchmark accuracy
    old_bench: str = ""
    new_bench: str = ""


@dataclass
class Grid:
    # None: absent from the file (each is required; `validate` says so)
    name: str | None = None
    config: str | None = None  # the trainer config every run uses
    base: Base | None = None
    stage: str | None = None  # the stage every run trains on
    steps: int | None = None
    eval: EvalNames | None = None
    axes: dict[str, Any] | None = None  # in the file's order: the runs and their names follow it
    center: dict[str, Any] | None = None
    mode: Literal["one_at_a_time", "product"] = "one_at_a_time"
    eval_every: int = 0  # 0: at the start, the resume point and the end only

    def validate(self) -> list[str]:
        required = ("name", "config", "base", "stage", "steps", "eval", "axes")
        problems = [f"{key}: missing" for key in required if getattr(self, key) is None]
        if self.name is not None and (not PLAIN_NAME.fullmatch(self.name) or set(self.name) == {"."}):
            problems.append(f"name: {show(self.name)} must be a plain name (it names runs/ablate/<name>)")
        axes = self.axes or {}
        for key, values in axes.items():
            if key not in AXES:
                problems.append(f"axes.{key}: unknown axis (one of {', '.join(AXES)})")
            elif not isinstance(values, list) or not values:
                problems.append(f"axes.{key}: a non-empty list")
            else:
                for i, v in enumerate(values):
                    if key == "resume" and v not in RESUME:
                        problems.append(f"axes.resume[{i}]: {' or '.join(RESUME)} (got {v!r})")
                    elif key != "resume" and not _non_negative_number(v):
                        problems.append(f"axes.{key}[{i}]: a non-negative number (got {v!r})")
        if self.axes is not None and not axes:
            problems.append("axes: a mapping of at least one axis to its values")
        if self.base is not None:
            if not self.base.model:
                problems.append("base.model: missing (the model every run starts from)")
            if self.base.stage and self.base.steps < 1:
                problems.append("base.steps: how many steps to train the base on base.stage (at least 1)")
        if self.eval is not None and not (self.eval.old and self.eval.new):
            problems.append("eval: needs `old` and `new`, the eval set names of the old and the new domain")
        if self.eval is not None and bool(self.eval.old_bench) != bool(self.eval.new_bench):
            problems.append("eval: `old_bench` and `new_bench` go together (a benchmark of each domain)")
        if self.mode == "one_at_a_time":
            missing = [k for k in axes if k not in (self.center or {})]
            if missing:
                problems.append(
                    f"center: give the value of {', '.join(missing)} that the other axes are varied around"
                )
        if self.steps is not None and self.steps < 2:
            problems.append("steps: an integer of at least 2")
        return problems


def _non_negative_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every problem in one error naming the file and the key."""
    grid = build(Grid, read_yaml(path), str(path))
    grid.center = grid.center or {}
    return grid


def points(grid: Grid) -> list[dict]:
    """The runs' parameters, without repeats, the center first."""
    if grid.mode == "product":
        keys = list(grid.axes)
        combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.axes.values())]
    else:
        combos = [dict(grid.center)]
        for key, values in grid.axes.items():
            combos += [{**grid.center, key: v} for v in values]
    unique = []
    for c in combos:
        if c not in unique:
            unique.append(c)
    return unique


def run_name(params: dict) -> str:
    parts = []
    for key, value in params.items():
        if key == "replay":
            parts.append(f"replay{value:g}")
        elif key == "lr_scale":
            parts.append(f"lr{value:g}x")
        else:
            parts.append(str(value))
    return "-".join(parts)


def _build_mix(stage_file: str, name: str, output: Path, replay: float | None, tokens: int | None) -> Path:
    """Plan the stage with this run's replay share and budget; the manifest goes to OUTPUT/mixes/NAME."""
    from dataclasses import replace

    from cpt.manifest import write_stage_manifest
    from cpt.mix.plan import plan
    from cpt.mix.stage import load_stage

    stage = load_stage(stage_file)
    stage = replace(stage, name=name, tokens=tokens or stage.tokens)
    if replay is not None:
        stage = replace(stage, replay=replace(stage.replay, share=replay))
        problems = stage.validate()
        if problems:
            raise ConfigError(f"{stage_file} (replay {replay:g})", problems)
    folder = output / "mixes" / name
    write_stage_manifest(plan(stage, stage_file), folder)
    return folder


class _Trainer:
    """Runs `trainer/main.py` in a child process, its output to the run's train.log."""

    def __init__(self, config: str):
        self.config = config
        self.env = dict(os.environ)
        import torch

        if not torch.cuda.is_available():
            self.env.setdefault("DS_ACCELERATOR", "cpu")

    def __call__(self, run_dir: Path, *args: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            str(REPO / "trainer" / "main.py"),
            "--config",
            self.config,
            "--output",
            str(run_dir),
            *args,
        ]
        with open(run_dir / "train.log", "a", encoding="utf-8") as log:
            log.write("$ " + " ".join(command) + "\n")
            log.flush()
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=self.env).returncode
        if code:
            tail = (
                (run_dir / "train.log")
                .read_text(encoding="utf-8", errors="replace")
                .strip()
                .splitlines()[-1:]
            )
            raise RuntimeError(
                f"{run_dir}: the trainer failed (exit {code}): {tail[0] if tail else ''} (log: {run_dir / 'train.log'})"
            )


def _set(*overrides: str) -> list[str]:
    """`--set KEY=VALUE` for each override, in order (a later one wins), as trainer/main.py takes them."""
    return [arg for override in overrides for arg in ("--set", override)]


def _finished(run_dir: Path) -> bool:
    """result.json is written only once a run's training has ended."""
    return (run_dir / "result.json").is_file()


def _checkpoint_step(run_dir: Path) -> int:
    """The step of the run's latest complete checkpoint, 0 when it has none."""
    from trainer.checkpoint import latest_tag

    tag = latest_tag(run_dir)
    return int(tag.removeprefix("step_")) if tag else 0


def _train_base(grid: Grid, output: Path, train: _Trainer, tokens_per_step: int) -> str:
    if not grid.base.stage:
        return grid.base.model
    run_dir = output / "base"
    if not _finished(run_dir):
        mix = _build_mix(
            grid.base.stage, f"{grid.name}-base", output, None, grid.base.steps * tokens_per_step
        )
        resume = ["--resume"] if _checkpoint_step(run_dir) else []
        print(
            f"[base] training {grid.base.model} on {grid.base.stage} for {grid.base.steps} steps -> {run_dir}",
            flush=True,
        )
        train(
            run_dir,
            "--mix",
            str(mix),
            "--model",
            grid.base.model,
            *resume,
            *_set(f"max_steps={grid.base.steps}"),
        )
        write_json(run_dir / "result.json", {"steps": grid.base.steps})
    return str(run_dir)


def _eval(metrics: dict[int, dict], name: str, at: int) -> float:
    key = f"eval/{name}/loss"
    if key not in metrics.get(at, {}):
        raise RuntimeError(f"no {key} at step {at}: is `{name}` one of the trainer config's eval.sets?")
    return metrics[at][key]


def _bench(metrics: dict[int, dict], name: str, at: int, figure: str = "acc") -> float | None:
    key = f"bench/{name}/{figure}"
    if key not in metrics.get(at, {}):
        if figure != "acc":  # a run logged before standard errors were
            return None
        raise RuntimeError(f"no {key} at step {at}: is `{name}` a task or language of eval.benchmarks?")
    return metrics[at][key]


def _acc_change(r: dict, key: str) -> str:
    """A run's accuracy forgetting (`acc_forgetting`) or learning with its standard error and whether it
    is within noise (`cpt.report.collect.change_text`)."""
    which = "old_acc" if key == "acc_forgetting" else "new_acc"
    (a0, a1), (s0, s1) = r[which], r.get(which + "_stderr") or (None, None)
    return change_text(a0, s0, a1, s1) if key == "acc_forgetting" else change_text(a1, s1, a0, s0)


# how a finding reads each measure: forgetting and learning are positive when the run forgot or learned;
# `end` is what a run ends with on the two domains together, lower is better
MEASURES = {
    "loss": {
        "forgetting": "forgetting",
        "learning": "learning",
        "old": "old_loss",
        "new": "new_loss",
        "end": lambda r: r["new_loss"][1] + r["old_loss"][1],
        "end_name": "end loss new+old",
        "suffix": "",
    },
    "acc": {
        "forgetting": "acc_forgetting",
        "learning": "acc_learning",
        "old": "old_acc",
        "new": "new_acc",
        "end": lambda r: -(r["new_acc"][1] + r["old_acc"][1]),
        "end_name": "end accuracy new+old",
        "suffix": " (on benchmark accuracy)",
    },
}


def _findings(runs: list[dict], center: dict, on: str = "loss") -> list[dict]:
    """Check the three claims on the runs that differ from the center in one axis only, reading
    forgetting and learning off the held-out loss (`on="loss"`) or benchmark accuracy (`"acc"`)."""
    m = MEASURES[on]
    fk, lk, ok, nk, sfx = m["forgetting"], m["learning"], m["old"], m["new"], m["suffix"]

    def along(axis: str) -> list[dict]:
        if axis not in center:
            return []
        return sorted(
            (r for r in runs if all(r["params"].get(k) == v for k, v in center.items() if k != axis)),
            key=lambda r: r["params"].get(axis),
        )

    def show(r: dict, key: str, signed: bool = True) -> str:  # accuracy changes with their error
        if on == "acc":
            return _acc_change(r, key)
        return f"{r[key]:+.3f}" if signed else f"{r[key]:.3f}"

    found = []
    replay = along("replay")
    if len({r["params"]["replay"] for r in replay}) > 1:
        low, high = replay[0], replay[-1]
        found.append(
            {
                "claim": "replay lowers forgetting" + sfx,
                "reproduced": high[fk] < low[fk],
                "evidence": f"forgetting {show(low, fk)} at replay {low['params']['replay']:g}, "
                f"{show(high, fk)} at {high['params']['replay']:g}",
            }
        )
    lr = along("lr_scale")
    if len({r["params"]["lr_scale"] for r in lr}) > 1:
        low, high = lr[0], lr[-1]
        found.append(
            {
                "claim": "a higher LR learns more and forgets more" + sfx,
                "reproduced": high[lk] > low[lk] and high[fk] > low[fk],
                "evidence": f"LR x{low['params']['lr_scale']:g}: learning {show(low, lk, False)}, forgetting "
                f"{show(low, fk)}; x{high['params']['lr_scale']:g}: learning {show(high, lk, False)}, "
                f"forgetting {show(high, fk)}",
            }
        )
    resume = {r["params"]["resume"]: r for r in along("resume")}
    # "hurts": a worse end on the two domains together than resuming without re-warming, one finding for
    # each way of not re-warming in the grid (Gupta et al. compare against a constant LR)
    end = {k: m["end"](r) for k, r in resume.items()}
    against = {"constant": "holding the LR constant", "continue": "continuing the schedule"}
    sign = 1 if on == "loss" else -1  # the evidence shows the measure itself (accuracy: higher is better)
    for k in ("constant", "continue"):
        if "rewarm" in resume and k in resume:
            w, o = resume["rewarm"], resume[k]
            found.append(
                {
                    "claim": f"re-warming the LR when resuming on the same data hurts, against {against[k]}"
                    + sfx,
                    "reproduced": end["rewarm"] > end[k],
                    "evidence": f"{m['end_name']} {sign * end['rewarm']:.3f} re-warmed (new {w[nk][1]:.3f}, "
                    f"old {w[ok][1]:.3f}), {sign * end[k]:.3f} {k} (new {o[nk][1]:.3f}, old {o[ok][1]:.3f})",
                }
            )
    return found


def run_grid(grid_file: str | Path, output: str | Path | None = None) -> tuple[dict, Path]:
    """Train what the grid still lacks; the summary, and the folder holding it and the runs."""
    grid = load_grid(grid_file)
    output = Path(output or Path("runs") / "ablate" / grid.name)
    output.mkdir(parents=True, exist_ok=True)
    from trainer.config import load_config

    cfg = load_config(grid.config, ["mix=grid"])  # each run names its own mix
    names = {s.name for s in cfg.eval.sets}
    for key in (grid.eval.old, grid.eval.new):
        if key not in names:
            sets = ", ".join(sorted(names)) or "none"
            raise ConfigError(str(grid_file), [f"eval: `{key}` is not an eval set of {grid.config} ({sets})"])
    if grid.eval.old_bench:
        from trainer.evaluation.benchmarks import LAYOUTS

        tasks = cfg.eval.benchmarks.tasks
        known = {*tasks, *(LAYOUTS[t].lang for t in tasks if t in LAYOUTS)}
        for key in ("old_bench", "new_bench"):
            name = getattr(grid.eval, key)
            if name not in known:
                listed = ", ".join(sorted(known)) or "none: the config has no eval.benchmarks"
                raise ConfigError(
                    str(grid_file),
                    [f"eval.{key}: `{name}` is not a task or language of eval.benchmarks ({listed})"],
                )
    tokens_per_step = cfg.data.micro_batch_size * cfg.data.gradient_accumulation  # sequences, one rank
    from cpt.mix.stage import load_stage

    tokens_per_step *= load_stage(grid.stage).seq_len
    train = _Trainer(grid.config)
    base = _train_base(grid, output, train, tokens_per_step)

    from tqdm import tqdm

    runs = []
    todo = points(grid)
    for params in tqdm(todo, desc=f"ablate {grid.name}", unit="run"):
        name = run_name(params)
        run_dir = output / "runs" / name
        if not _finished(run_dir):
            mix = _build_mix(
                grid.stage, f"{grid.name}-{name}", output, params.get("replay"), grid.steps * tokens_per_step
            )
            scale = params.get("lr_scale", 1.0)
            common = [
                "--mix",
                str(mix),
                *_set(
                    f"optim.lr={cfg.optim.lr * scale!r}",
                    f"schedule.min_lr={cfg.schedule.min_lr * scale!r}",
                    f"eval.every={grid.eval_every}",
                    f"max_steps={grid.steps}",
                ),
            ]
            origin = ["--init-from", base] if grid.base.stage else ["--model", base]
            done = _checkpoint_step(run_dir)
            start = ["--resume"] if done else origin
            half = grid.steps // 2
            split = "resume" in params  # stop half-way, then resume on the same data
            if split and params["resume"] != "continue":
                # planned for the whole run: both parts follow one schedule, restarting at the resume point
                common += _set(f"schedule.restarts=[{half}]", f"schedule.restart={params['resume']}")
            if split and done < half:
                tqdm.write(f"[{name}] steps {done + 1}-{half} -> {run_dir}")
                train(run_dir, *start, *common, *_set(f"max_steps={half}", f"checkpoint.every={half}"))
                start, done = ["--resume"], half
            how = f" ({params['resume']} after step {half})" if split else ""
            tqdm.write(f"[{name}] steps {done + 1}-{grid.steps}{how} -> {run_dir}")
            train(run_dir, *start, *common, *_set(f"checkpoint.every={grid.steps}"))
        metrics = read_metrics(run_dir)
        end = max(metrics)
        result = {
            "name": name,
            "params": params,
            "run": str(run_dir.relative_to(output)),  # relative: the grid's folder can move
            "steps": end,
            "old_loss": [_eval(metrics, grid.eval.old, 0), _eval(metrics, grid.eval.old, end)],
            "new_loss": [_eval(metrics, grid.eval.new, 0), _eval(metrics, grid.eval.new, end)],
        }
        result["forgetting"] = result["old_loss"][1] - result["old_loss"][0]
        result["learning"] = result["new_loss"][0] - result["new_loss"][1]
        if grid.eval.old_bench:
            result["old_acc"] = [
                _bench(metrics, grid.eval.old_bench, 0),
                _bench(metrics, grid.eval.old_bench, end),
            ]
            result["new_acc"] = [
                _bench(metrics, grid.eval.new_bench, 0),
                _bench(metrics, grid.eval.new_bench, end),
            ]
            for which, bench in (("old_acc", grid.eval.old_bench), ("new_acc", grid.eval.new_bench)):
                result[which + "_stderr"] = [
                    _bench(metrics, bench, 0, "stderr"),
                    _bench(metrics, bench, end, "stderr"),
                ]
            result["acc_forgetting"] = result["old_acc"][0] - result["old_acc"][1]
            result["acc_learning"] = result["new_acc"][1] - result["new_acc"][0]
        write_json(run_dir / "result.json", result)
        runs.append(result)

    summary = {
        "name": grid.name,
        "grid": str(grid_file),
        "base": base,
        "steps": grid.steps,
        "mode": grid.mode,
        "center": grid.center,
        "eval": {"old": grid.eval.old, "new": grid.eval.new},
        "runs": runs,
        "findings": _findings(runs, grid.center) if grid.mode == "one_at_a_time" else [],
    }
    if grid.eval.old_bench:
        summary["eval"].update(old_bench=grid.eval.old_bench, new_bench=grid.eval.new_bench)
        if grid.mode == "one_at_a_time":
            summary["findings"] += _findings(runs, grid.center, on="acc")
    write_json(output / "ablation.json", summary)
    return summary, output


def table(summary: dict) -> str:
    acc = "old_bench" in summary["eval"]
    head = f"{'run':<28} {'old loss':>17} {'forgetting':>10} {'new loss':>17} {'learning':>9}"
    if acc:
        old, new = summary["eval"]["old_bench"], summary["eval"]["new_bench"]
        head += f" {old + ' acc':>15} {new + ' acc':>15}"
    lines = [head]
    for r in summary["runs"]:
        line = (
            f"{r['name']:<28} {r['old_loss'][0]:>7.3f} -> {r['old_loss'][1]:<7.3f} {r['forgetting']:>+10.3f} "
            f"{r['new_loss'][0]:>7.3f} -> {r['new_loss'][1]:<7.3f} {r['learning']:>9.3f}"
        )
        if acc:
            line += f" {r['old_acc'][0]:>6.3f} -> {r['old_acc'][1]:<5.3f} {r['new_acc'][0]:>6.3f} -> {r['new_acc'][1]:<5.3f}"
            line += (
                f"  forgetting {_acc_change(r, 'acc_forgetting')}, learning {_acc_change(r, 'acc_learning')}"
            )
        lines.append(line)
    for f in summary["findings"]:
        lines.append(
            f"{'reproduced' if f['reproduced'] else 'NOT reproduced'}: {f['claim']} ({f['evidence']})"
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--grid", required=True, help="a grid file, e.g. mixes/ablations/forgetting.yaml")
    parser.add_argument("--output", help="folder for the runs and ablation.json (default runs/ablate/<name>)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs the grid makes, then exit")


def run(args: argparse.Namespace) -> int:
    try:
        if args.dry_run:
            grid = load_grid(args.grid)
            for params in points(grid):
                print(f"{run_name(params):<28} {params}")
            return 0
        output = Path(args.output or Path("runs") / "ablate" / load_grid(args.grid).name)
        with output_lock(output, "cpt ablate"):  # one writer per output (each run also locks its own folder)
            summary, output = run_grid(args.grid, output)
            print(table(summary))
            from cpt.report.page import write_report

            page = write_report([output], output / "report", f"ablation {summary['name']}")
    except (ConfigError, MixError, RuntimeError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {output / 'ablation.json'} and {page}")
    return 0
