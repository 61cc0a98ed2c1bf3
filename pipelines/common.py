"""What every pipeline shares: output and Slurm settings, the settings record that makes reruns resume
safely, and the datatrove executors (local processes or Slurm array jobs)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from datatrove.executor import LocalPipelineExecutor, RayPipelineExecutor

from cpt.config import ConfigError
from cpt.io import OutputError, disk_fault, write_json


@dataclass
class WriteConfig:
    max_file_size_mb: int = 512
    rows_per_group: int = 1000
    compression: Literal["zstd", "snappy", "gzip", "brotli", "lz4"] = "zstd"


@dataclass
class SlurmConfig:
    partition: str = "debug"
    time: str = "24:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2
    qos: str = "normal"
    job_name: str = "cpt"
    sbatch_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayConfig:
    """Resources each task reserves on a Ray cluster (`--executor ray`); the cluster is the one
    `RAY_ADDRESS` or `ray start` names, or else a local one started for the run."""

    cpus_per_task: int = 1
    mem_per_cpu_gb: float = 2


def recorded_config(cfg) -> dict:
    """A pipeline's settings as its run records them: everything that decides the output. Where the tasks
    run (`ray`) is left out, like the executor itself: the same run may resume on another cluster."""
    config = dataclasses.asdict(cfg)
    config.pop("ray", None)
    return config


def check_settings(
    report_dir: Path,
    output: Path,
    settings: dict,
    record: bool = True,
    inputs: list[Path] | None = None,
    root: Path | None = None,
) -> None:
    """Record a run's settings, and the files it reads with their sizes (`inputs`); a rerun into the
    same output must use the same settings and find the same files (it resumes what was started: a file
    added, removed or changed in between would be read twice, or never).

    Nothing is written before both checks pass, and nothing at all with `record=False` (a dry run).
    """
    settings = json.loads(json.dumps(settings))
    path = report_dir / "settings.json"
    pinned = report_dir / "inputs.json"
    current = None
    if inputs is not None:  # named relative to the input folder: the run may resume from another folder
        current = [{"path": _relative(f, root), "size": _size(f)} for f in inputs]
    if current is not None and pinned.is_file():
        difference = _first_difference(json.loads(pinned.read_text(encoding="utf-8"))["files"], current)
        if difference:
            raise ConfigError(
                str(pinned),
                [
                    f"the inputs changed since this run started ({difference}): resuming would read "
                    "some twice or never; restore them, or write to a new --output"
                ],
            )
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != settings:
            changed = sorted(k for k in settings if previous.get(k) != settings[k])
            raise ConfigError(
                str(path),
                [
                    f"{output} holds a run made with other settings ({', '.join(changed)} differ): "
                    "resume with the same command, or write to a new --output"
                ],
            )
        return
    if record:
        if current is not None:
            write_json(pinned, {"files": current})
        write_json(path, settings)


def _size(path: Path) -> int | None:
    """A local file's size; None for a remote one (s3://...: its listing is still pinned)."""
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def _relative(path: Path, root: Path | None) -> str:
    try:
        return str(Path(path).relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _first_difference(before: list[dict], now: list[dict]) -> str | None:
    """The first file added, removed or resized between two input lists, in words; None if equal."""
    old = {f["path"]: f["size"] for f in before}
    new = {f["path"]: f["size"] for f in now}
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            return f"{name} is gone"
        if name not in old:
            return f"{name} is new"
        if old[name] != new[name]:
            return f"{name} was {old[name] or 0:,} bytes, now {new[name] or 0:,}"
    return None


def check_paths(inputs: list[str | Path], output: str | Path) -> None:
    """Refuse, before any work, an --output that would write over or into what the run reads: an
    existing file, an input folder itself, or a folder inside one (a rerun would read its own shards)."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError("--output", [f"{output} is a file, not a folder: name a folder for the run"])
    target = output.resolve()
    for given in inputs:
        source = Path(str(given).split("*")[0] or ".").resolve()
        if target == source or source in target.parents:
            raise ConfigError(
                "--output",
                [
                    f"{output} is {'the input' if target == source else f'inside the input {given}'}: the run "
                    "would write into what it reads; name another folder"
                ],
            )


def unfinished_tasks(logs: Path, tasks: int | None = None) -> list[str]:
    """A line per task without a completion marker, naming its log files (datatrove's task log, and
    Slurm's output of that array task when the run went through Slurm). Every datatrove logging folder
    under `logs` counts (dedup and tokenize run several stages, each in its own); `tasks` is the task
    count of a run whose single stage has not been launched yet."""
    stages = {}
    for marker in sorted(logs.rglob("executor.json")):
        meta = json.loads(marker.read_text(encoding="utf-8"))
        stages[marker.parent] = int(meta.get("world_size") or meta.get("tasks") or 1)
    if not stages and tasks:
        stages[logs] = tasks
    lines = []
    for folder, n in stages.items():
        name = "" if folder == logs else f"{folder.relative_to(logs)}: "
        done = {int(p.name) for p in (folder / "completions").glob("*") if p.name.isdigit()}
        for rank in sorted(set(range(n)) - done):
            paths = [
                folder / "logs" / f"task_{rank:05d}.log",
                *sorted((folder / "slurm").glob(f"*_{rank}.out")),
            ]
            found = [str(p) for p in paths if p.is_file()]
            lines.append(
                f"{name}task {rank} did not complete: "
                + (", ".join(found) if found else "no log yet (queued, running or never started)")
            )
    return lines


def check_shard_input(input_dir: Path, files: list[Path], command: str) -> None:
    """The input of dedup, score and tokenize: the shards of a finished run (a run with unfinished tasks
    holds only part of its documents) whose files have a `text` column."""
    import pyarrow.parquet as pq

    # the run's own folder, or the one above a language folder (`tokenize --input dedup/en`)
    report = next(
        (d / "report" for d in (input_dir, input_dir.parent) if (d / "report" / "steps.json").is_file()), None
    )
    if report is not None:
        steps = json.loads((report / "steps.json").read_text(encoding="utf-8"))
        missing = unfinished_tasks(report / "logs", steps.get("tasks"))
        # dedup's steps.json lists each language's stages: one never launched has no logs to find
        for lang, stages in dedup_stages(steps).items():
            if isinstance(stages, list):
                for _row, stage, _index, tasks in stages:
                    folder = report / "logs" / lang / stage
                    line = f"{lang}/{stage}: {tasks} task(s) never started"
                    if not (folder / "executor.json").is_file() and line not in missing:
                        missing.append(line)
        if missing:
            raise ConfigError(
                str(input_dir),
                [
                    f"its run has {len(missing)} unfinished task{'s' if len(missing) > 1 else ''} ({missing[0]}"
                    f"{', ...' if len(missing) > 1 else ''}), so it holds only part of its documents: finish it "
                    f"(run its command again) before `{command}`"
                ],
            )
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as e:  # noqa: BLE001 - any unreadable footer: pyarrow raises several kinds
            raise ConfigError(str(f), [f"not a readable Parquet file ({str(e).splitlines()[0]})"]) from None
        if "text" not in names:
            raise ConfigError(
                str(f),
                [f"no `text` column (columns: {', '.join(names)}): `{command}` reads clean or dedup shards"],
            )


def shard_inputs(
    given: str | Path | list, output: Path, command: str
) -> tuple[Path, list[Path], str | list[str]]:
    """The Parquet shards `--input` names for dedup-like readers (score, tokenize): one or several
    finished clean/dedup/score outputs, language folders of them, shard files, or globs of these, none
    holding `output` (`check_paths`). Returns their common folder (the reader's root), the shards (each
    read once, checked by `check_shard_input`) and the input as the settings record it."""
    import glob

    from cpt.shards import shard_files

    given = [given] if isinstance(given, str | Path) else list(given)
    check_paths(given, output)
    if len(given) == 1 and not glob.has_magic(str(given[0])) and not Path(given[0]).is_file():
        folder = Path(given[0])  # one folder: as it always was, its shards relative to it
        files = shard_files(folder)
        check_shard_input(folder, files, command)
        return folder, files, str(folder.resolve())
    found: set[Path] = set()
    for g in given:
        matches = sorted(glob.glob(str(g), recursive=True)) if glob.has_magic(str(g)) else [str(g)]
        if not matches:
            raise FileNotFoundError(f"{g}: matches no file or folder")
        for match in map(Path, matches):
            if match.is_file():
                if match.suffix != ".parquet":
                    raise ConfigError(
                        str(match), [f"not a Parquet shard: `{command}` reads clean or dedup shards"]
                    )
                check_shard_input(match.parent, [match], command)
                found.add(match.resolve())
            else:
                files = shard_files(match)
                check_shard_input(match, files, command)
                found.update(f.resolve() for f in files)
    files = sorted(found)
    root = Path(os.path.commonpath([f.parent for f in files]))
    return root, files, [str(g) if glob.has_magic(str(g)) else str(Path(g).resolve()) for g in given]


def make_executor(
    kind: Literal["local", "slurm", "ray"],
    pipeline: list,
    tasks: int,
    logging_dir: Path,
    slurm: SlurmConfig,
    workers: int | None = None,
    depends=None,
    job_name: str | None = None,
    ray: RayConfig | None = None,
    progress: bool = False,
    desc: str | None = None,
):
    """A datatrove executor; `depends` chains stages (Slurm: `--dependency=afterok`; local and Ray: the
    stage it depends on runs first). `progress`: a local run of several tasks shows one bar of tasks
    done, named `desc`."""
    if kind == "ray":
        ray = ray or RayConfig()
        return RayStage(
            pipeline,
            tasks=tasks,
            workers=workers or -1,
            cpus_per_task=ray.cpus_per_task,
            mem_per_cpu_gb=ray.mem_per_cpu_gb,
            logging_dir=str(logging_dir.resolve()),
            skip_completed=True,
            after=depends,
        )
    if kind == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        in_venv = sys.prefix != sys.base_prefix
        return SlurmPipelineExecutor(
            pipeline,
            tasks=tasks,
            workers=workers or -1,
            time=slurm.time,
            partition=slurm.partition,
            cpus_per_task=slurm.cpus_per_task,
            mem_per_cpu_gb=slurm.mem_per_cpu_gb,
            qos=slurm.qos,
            job_name=job_name or slurm.job_name,
            sbatch_args=dict(slurm.sbatch_args),
            venv_path=os.path.join(sys.prefix, "bin", "activate") if in_venv else None,
            logging_dir=str(logging_dir.resolve()),
            slurm_logs_folder=str((logging_dir / "slurm").resolve()),
            skip_completed=True,
            depends=depends,
        )
    # never more tasks at once than this process may use CPUs, unless --workers asks for more: each
    # extra one only slows the others down
    return LocalExecutor(
        pipeline,
        tasks=tasks,
        workers=min(workers or available_cpus(), tasks),
        logging_dir=str(logging_dir),
        skip_completed=True,
        depends=depends,
        progress=progress,
        desc=desc or job_name or "tasks",
    )


# datatrove's task log line, on the terminal and in the task's log file
_LOG_FORMAT = "{time:YYYY-MM-DD HH:mm:ss.SSS} | <level>{level: <8}</level> | {name}:{function}:{line} - <level>{message}</level>"


# datatrove warnings that tell a cpt user nothing, kept in the task's log file only: a task with no file
# of one kind to read (the list of each kind of input is shared among all the tasks), and a MinHash task
# that found no duplicate to remove
_KNOWN_NOISE = ("No files found on ", "No .remove file for ")


def _task_logger(logging_dir, rank: int, local_rank: int = 0, node_rank: int = -1):
    """datatrove's `add_task_logger` (the same handlers, levels and format), except that a failed task is
    one line on the terminal, naming its log file, where datatrove prints the whole traceback (it stays
    in the log file); and that a log file that cannot be written (the full disk that failed the task)
    drops its lines instead of printing loguru's own error report, three tracebacks long."""
    from loguru import logger

    logger.remove()
    name = f"logs/task_{rank:05d}.log"
    logfile = logging_dir.open(name, "w")
    where = logging_dir.resolve_paths(name)

    def terminal(record) -> str:  # a format function: loguru appends no traceback of its own
        error = record["exception"] and record["exception"].value
        # the traceback's place, unless the disk is what failed: then the log file may not hold it
        failed = (
            f" (traceback in {where})"
            if error and not (isinstance(error, OSError) and disk_fault(error))
            else ""
        )
        return _LOG_FORMAT + failed.replace("{", "{{").replace("}", "}}") + "\n"

    def to_file(message) -> None:
        try:
            logfile.write(message)
        except OSError:  # the task's own error says what happened to the disk
            pass

    prefix = f"[NODE {node_rank}] " if node_rank != -1 else ""
    level = os.environ.get("LOGURU_LEVEL", "INFO") if local_rank == 0 else "ERROR"  # run.py sets it
    quiet = level not in ("TRACE", "DEBUG", "INFO")  # --verbose shows them all
    logger.add(
        sys.stderr,
        level=level,
        format=lambda r: prefix + terminal(r),
        filter=lambda r: not (quiet and r["message"].startswith(_KNOWN_NOISE)),
    )
    logger.add(to_file, level="DEBUG", format=prefix + _LOG_FORMAT, colorize=False)
    logger.info(f"Launching pipeline for {rank=}")
    return logfile


class LocalExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor with cpt's task logger (`_task_logger`) and one progress bar of
    the tasks done. datatrove's `_run_for_rank` sets a task's logging up through the module-level
    `add_task_logger` and offers no parameter for it, so that name is swapped for the duration of each
    task (in the worker process that runs it: this class is what the worker unpickles, so the swap
    happens there too).

    The bar replaces datatrove's own, one document bar and one file bar per task, which overwrite each
    other when tasks run side by side (and print a pair even for a task that has no file to read)."""

    def __init__(self, *args, progress: bool = False, desc: str = "tasks", **kwargs):
        super().__init__(*args, **kwargs)
        self.progress, self.desc = progress, desc

    def run(self):
        if not self.progress or self.world_size == 1:  # one task: its reader shows its documents
            return super().run()
        if self.depends and not self.depends._launched:  # its bar first, then this one
            self.depends.run()
        from tqdm import tqdm

        # display only: the count is read from datatrove's completion markers, nothing depends on it
        marks = Path(self.logging_dir.resolve_paths("completions"))

        def done() -> int:
            try:
                return len(os.listdir(marks))
            except OSError:
                return 0

        stop = threading.Event()
        bar = tqdm(total=self.world_size, initial=done(), desc=self.desc, unit="task", disable=False)

        ticking = sys.stderr.isatty()  # a terminal's bar shows the time pass; a log gets each change

        def follow() -> None:
            while not stop.wait(1.0):
                n = done()
                if ticking or n != bar.n:
                    bar.n = n
                    bar.refresh()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        try:
            return super().run()
        finally:
            stop.set()
            thread.join()
            bar.n = done()
            bar.close()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        import datatrove.executor.base as base

        own = base.add_task_logger
        base.add_task_logger = _task_logger
        try:
            return super()._run_for_rank(rank, local_rank, node_rank)
        finally:
            base.add_task_logger = own


class RayStage(RayPipelineExecutor):
    """datatrove's RayPipelineExecutor, connected to a Ray cluster on first use, with its dependency run
    by cpt: datatrove's own `depends` waits, in 2-minute sleeps and without end, for a stage that has a
    failed task. Here a stage whose dependency left tasks unfinished does not start, and the pipeline
    reports those tasks as after a local run (exit 1; the same command again runs only those)."""

    def __init__(self, *args, after: RayPipelineExecutor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.after = after

    def run(self):
        if self.after is not None:
            self.after.run()
            if self.after.get_incomplete_ranks(skip_completed=True):
                return
        import ray

        if not ray.is_initialized():
            # the cluster RAY_ADDRESS or `ray start` names when there is one, else a local one for this run
            ray.init(include_dashboard=False, log_to_driver=False)
        super().run()


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (containers, Slurm
    steps), which `os.cpu_count()` ignores."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


class SlurmError(RuntimeError):
    """squeue does not answer, or a job could not be followed."""


def slurm_job_ids(executors) -> list[str]:
    """The Slurm job ids the executors submitted (none for one whose tasks had all finished already)."""
    return [str(e.job_id) for e in executors if getattr(e, "job_id", None) not in (None, -1)]


def _queued_jobs() -> list[tuple[str, str, str, str]]:
    """This user's queued jobs as (array job id, state, reason, dependency)."""
    for attempt in range(5):
        proc = subprocess.run(
            ["squeue", "-h", "--me", "-o", "%F|%T|%r|%E"], capture_output=True, text=True, timeout=120
        )
        if proc.returncode == 0:
            return [tuple(line.split("|", 3)) for line in proc.stdout.splitlines() if line.count("|") >= 3]
        time.sleep(2 + 4 * attempt)  # slurmctld busy or restarting
    raise SlurmError(f"squeue failed: {proc.stderr.strip() or f'exit code {proc.returncode}'}")


def _with_dependents(jobs: set[str], queued: list[tuple[str, str, str, str]]) -> set[str]:
    """`jobs` and every queued job that waits on one of them, however indirectly (datatrove's stats
    merge, the next stage)."""
    ours = set(jobs)
    grew = True
    while grew:
        before = len(ours)
        ours |= {job for job, _, _, dep in queued if set(re.findall(r"\d+", dep)) & ours}
        grew = len(ours) > before
    return ours


SLURM_JOBS = ".cpt.slurm_jobs"  # in an output: the jobs a submission without --wait left writing it


def check_slurm_jobs_ended(output: str | Path) -> None:
    """One writer per output, across a Slurm submission: the output lock ends with the submitting
    command, so a submission without --wait records its jobs in the output, and a later command on that
    output is refused (OutputError) while any of them, or a job waiting on one, is still in the queue."""
    path = Path(output) / SLURM_JOBS
    if not path.is_file():
        return
    try:
        jobs = {str(j) for j in json.loads(path.read_text(encoding="utf-8"))["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        jobs = set()
    if jobs and shutil.which("squeue"):
        queued = _queued_jobs()
        ours = _with_dependents(jobs, queued)
        still = sorted({job for job, _, _, _ in queued if job in ours}, key=int)
        if still:
            raise OutputError(
                f"{output}: Slurm job{'s' if len(still) > 1 else ''} {', '.join(still)} of an earlier submission "
                "still write it: wait for them to end (squeue --me), or cancel them (scancel), then run again"
            )
    elif jobs:
        print(f"warning: {path}: squeue is not here to tell whether Slurm jobs {', '.join(sorted(jobs))} "
              "have ended; going on", file=sys.stderr)  # fmt: skip
    path.unlink()


def wait_for_slurm(job_ids: list[str], poll: float = 10.0) -> None:
    """Block until the jobs, and every job that depends on them (datatrove's stats merge, the next stage),
    have left the queue. A job whose dependency failed can never start (unless the cluster cancels such
    jobs itself): it is cancelled, so the caller can report the failed task instead of waiting forever."""
    ours = set(job_ids)
    if not ours:
        return
    print(f"waiting for Slurm job{'s' if len(ours) > 1 else ''} {', '.join(sorted(ours, key=int))} ...",
          file=sys.stderr, flush=True)  # fmt: skip
    while True:
        queued = _queued_jobs()
        ours = _with_dependents(ours, queued)
        mine = [(job, state, reason) for job, state, reason, _ in queued if job in ours]
        if not mine:
            return
        if all(state == "PENDING" and reason == "DependencyNeverSatisfied" for _, state, reason in mine):
            subprocess.run(
                ["scancel", *sorted({job for job, _, _ in mine})], capture_output=True, timeout=120
            )
            return
        time.sleep(poll)


def sbatch_script(executor) -> str:
    """The array-job script `executor.run()` would submit, without submitting it."""
    pickled = executor.logging_dir.resolve_paths("executor.pik")
    return executor.get_launch_file_contents(
        executor.get_sbatch_args(executor.tasks), f"launch_pickled_pipeline {pickled}"
    )


def dedup_stages(steps: dict) -> dict:
    """{lang: [[label, stage, step index, tasks], ...]} from a dedup run's steps.json ({} for other
    pipelines); runs written before steps.json named its pipeline held that mapping at the top level."""
    if "languages" in steps:
        return steps["languages"]
    return {} if "labels" in steps or "pipeline" in steps else steps


def pipeline_of(steps: dict) -> str:
    """The pipeline that wrote a run's steps.json: its recorded name; runs written before it was recorded
    are told apart by shape (clean's has labels, dedup's is keyed by language)."""
    if "pipeline" in steps:
        return steps["pipeline"]
    return "clean" if "labels" in steps else "dedup"


def read_steps(output: str | Path, pipeline: str) -> dict:
    """The `report/steps.json` a run of `pipeline` wrote into `output` (how to read its funnel)."""
    path = Path(output) / "report" / "steps.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {output} the --output of a {pipeline} run?")
    return json.loads(path.read_text(encoding="utf-8"))


# -- the command line every pipeline shares ------------------------------------------------------


def add_shard_input(p) -> None:
    """`--input` of the pipelines that read Parquet shards after clean (score, tokenize): see
    `shard_inputs`."""
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        action="extend",
        help="a clean or dedup output folder (its Parquet shards); several, language folders and globs too",
    )


def add_run_options(p, pipeline: str, example: str, executor_help: str, tasks_help: str) -> None:
    """The options every pipeline sub-command shares."""
    p.add_argument("--config", help=f"YAML settings (default: pipelines/configs/{pipeline}.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config key, e.g. --set {example} (repeatable)",
    )
    p.add_argument(
        "--executor",
        choices=["local", "slurm", "ray"],
        default="local",
        help=f"{executor_help}; or ray: tasks on a Ray cluster (datatrove's RayPipelineExecutor; the cluster "
        "RAY_ADDRESS names, else a local one), settings under `ray:` in the config",
    )
    p.add_argument("--tasks", type=int, help=tasks_help)
    p.add_argument(
        "--workers", type=int, help="tasks run at once (default: local: min(tasks, CPUs); slurm: no cap)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (and for slurm the sbatch script) and exit"
    )
    add_wait(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="datatrove's INFO logs on the terminal too (pipeline, stats of every task); without it the "
        "terminal shows progress, warnings, errors and the result. Every task's full log is in "
        "OUTPUT/report/logs either way",
    )


def add_wait(p) -> None:
    p.add_argument(
        "--wait",
        action="store_true",
        help="with --executor slurm: block until the jobs (and the jobs they chain) have ended, then report "
        "as a local run does; exit 1 naming each failed task and its logs",
    )


def submitted(args, executors, command: str) -> bool:
    """After a Slurm submission: without --wait say how to follow it and return False; with --wait
    block until its jobs have left the queue and return True (the caller then reports as for a local run)."""

    if not args.wait:
        write_json(Path(args.output) / SLURM_JOBS, {"jobs": slurm_job_ids(executors)})
        print(f"submitted; {command}")
        return False
    wait_for_slurm(slurm_job_ids(executors))
    return True


def comma_list(value: str | None) -> list[str] | None:
    """'a, b,c' -> ['a', 'b', 'c']; None stays None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def check_tasks(tasks: int | None, workers: int | None = None) -> None:
    if tasks is not None and tasks < 1:
        raise ConfigError("--tasks", [f"must be >= 1 (got {tasks})"])
    if workers is not None and workers < 1:
        raise ConfigError("--workers", [f"must be >= 1 (got {workers})"])


def print_funnel(funnel, output: Path) -> int:
    if funnel.tasks_done == funnel.tasks_total:  # a partial run's stages need not chain up yet
        funnel.check()
    funnel.save(Path(output) / "report" / "funnel.json")
    print(funnel.table())
    print(f"\nshards: {Path(output)}/<lang>/*.parquet   funnel: {Path(output)}/report/funnel.json")
    for warning in funnel.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if funnel.tasks_done < funnel.tasks_total:
        for line in unfinished_tasks(Path(output) / "report" / "logs", funnel.tasks_total):
            print(line, file=sys.stderr)
        print("some tasks did not finish: run the same command again to run only those", file=sys.stderr)
        return 1
    return 0
