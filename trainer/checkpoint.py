"""Checkpoints: DeepSpeed's engine state plus what makes a resume exact, written so a crash never
leaves a checkpoint that looks complete, and read so a damaged or crafted one is never loaded.

`Checkpointer` is what the training loop holds: it says when a checkpoint is due, saves the run's state
(step, tokens seen, loader position, manifest hash, step plan, EMA) beside DeepSpeed's, and restores it.

Layout of a run folder:
    config.json                    the resolved TrainConfig (what export and init-from rebuild)
    checkpoints/step_00000040/     DeepSpeed's files (the LR schedule's state among them), client state
                                   (step, loader state, manifest hash), rng_rank{r}.pt (each rank's torch
                                   and Python RNG)
    checkpoints/latest             the tag of the newest complete checkpoint
A checkpoint is written under `step_N.<pid>.tmp` (rank 0's pid, told to every rank once: each writes
its own files into it, and no other process uses the name), renamed whole when every rank has finished (`cpt.io.replace_dir`), and
only then named in `latest` (`cpt.io.write_text`: a temporary file, renamed); after a save, checkpoints
of earlier steps beyond `keep` are removed (by step number; never the one just written).

What is on disk decides, not the pointer alone: the checkpoints are the `step_N` folders (a `.tmp`
one is unfinished), `latest` is trusted only when it names one of them, else the newest by step is
latest. Before a checkpoint is handed to DeepSpeed (which unpickles with `weights_only=False`), every
`.pt` file in it is opened with `torch.load(weights_only=True)`, allowing only the few DeepSpeed types
its own files hold: a file that needs anything else is refused (unpickling it could run code); one
that cannot be read, or a missing rank's file, makes the checkpoint damaged, and `choose` falls back
to the previous one.
"""

from __future__ import annotations

import functools
import importlib
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from cpt.io import replace_dir, wrapped_disk_full, write_text
from trainer.schedule import Segment, describe_segments

LATEST = "latest"
STEP_TAG = re.compile(r"step_(\d+)")
# the temporary name of a checkpoint being saved: step_N.<pid>.tmp (step_N.tmp before pids were in it),
# the only names the clean-up of a killed save removes
PENDING = re.compile(r"step_\d+(?:\.\d+)?\.tmp")
# The only classes DeepSpeed's own checkpoint files pickle beyond tensors and builtins (found by
# saving ZeRO 0-3, bf16 and fp32, CPU offload, LoRA and embeddings-only checkpoints and listing what
# weights_only=True rejects). Each is rebuilt from plain values: no code of the file's choosing runs.
DEEPSPEED_GLOBALS = (
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # ZeRO optimizer states: the stage, an IntEnum
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # the static loss scale of fp32 and bf16 runs
    "deepspeed.utils.tensor_fragment.fragment_address",  # ZeRO 1-2: a parameter's place in the flat buffer
)


def _own_checkpoint(folder: Path) -> bool:
    """A step_N folder under checkpoints/ is the run's own (the trainer refuses an --output that holds
    files it does not write), whatever a crash left in it: a save of its step may replace it."""
    return STEP_TAG.fullmatch(folder.name) is not None


class CheckpointError(ValueError):
    """A checkpoint that is missing, or that cannot or must not be loaded."""


class DamagedCheckpoint(CheckpointError):
    """A checkpoint with a missing, truncated or unreadable file: an earlier one may still serve."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file that needs more than tensors and DeepSpeed's own types to load: refused."""


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_of(tag: str) -> int:
    return int(STEP_TAG.fullmatch(tag)[1])


def checkpoint_tags(run_dir: str | Path) -> list[str]:
    """The finished checkpoints of a run (its `step_N` folders), oldest first by step number."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(step_of(p.name), p.name) for p in root.iterdir() if STEP_TAG.fullmatch(p.name) and p.is_dir()]
    return [tag for _, tag in sorted(found)]


def latest_tag(run_dir: str | Path) -> str | None:
    """The checkpoint `latest` names when it is one of the run's, else the newest on disk (None: none).

    The pointer is preferred because a run resumed from an earlier checkpoint leaves later ones of the
    abandoned continuation on disk until it writes over them."""
    tags = checkpoint_tags(run_dir)
    pointer = checkpoint_dir(run_dir) / LATEST
    named = pointer.read_text(errors="replace").strip() if pointer.is_file() else ""
    return named if named in tags else (tags[-1] if tags else None)


def describe(tags: list[str]) -> str:
    """`step_00000002, step_00000003` (the first and last few when there are many)."""
    if not tags:
        return "no checkpoint"
    shown = tags if len(tags) <= 8 else [*tags[:3], "...", *tags[-3:]]
    return ", ".join(shown)


def resolve_tag(run_dir: str | Path, spelling: str) -> str:
    """The checkpoint a user names: `8`, `step_8`, `step_00000008` (or `latest`) all find step 8's."""
    tags = checkpoint_tags(run_dir)
    wanted = str(spelling).strip()
    if wanted == LATEST and tags:
        return str(latest_tag(run_dir))
    match = re.fullmatch(r"(?:step_)?(\d+)", wanted)
    for tag in tags if match else ():
        if step_of(tag) == int(match[1]):
            return tag
    raise CheckpointError(
        f"{checkpoint_dir(run_dir)}: no checkpoint {wanted!r}; there are {describe(tags)} "
        "(name one as step_N, step_0000000N or N)"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def load_plain(path: str | Path):
    """A `.pt` file loaded as plain data (tensors memory-mapped, not read): DeepSpeed's own types are
    allowed, anything else is UnsafeCheckpoint; a truncated or unreadable file is DamagedCheckpoint."""
    path = Path(path)
    try:  # lists the globals its pickle imports, without unpickling it
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip archive: truncated (its directory is at the end) or not torch.save's
        raise DamagedCheckpoint(
            f"{path}: not a complete torch.save archive (truncated, or written by something else)"
        ) from None
    foreign = [name for name in needed if name not in DEEPSPEED_GLOBALS]
    if foreign:
        raise UnsafeCheckpoint(
            f"{path}: needs {', '.join(foreign[:3])} to load, beyond tensors and DeepSpeed's own state; "
            "unpickling it could run code, so it is not loaded (delete the checkpoint unless you trust "
            "whoever wrote it)"
        )
    allowed = []
    for name in needed:  # only names from DEEPSPEED_GLOBALS reach here
        module, _, attr = name.rpartition(".")
        allowed.append(getattr(importlib.import_module(module), attr))
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{path}: holds pickle that weights-only loading refuses ({_first_line(e)}); not loaded"
        ) from None
    except Exception as e:
        raise DamagedCheckpoint(f"{path}: unreadable ({_first_line(e)}); truncated or damaged") from None


_STATES_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")  # ZeRO 0-2; 3


def verify(folder: str | Path) -> None:
    """Raise DamagedCheckpoint or UnsafeCheckpoint unless every file of the checkpoint in `folder` is
    there (DeepSpeed's model and optimizer states and an RNG file for each rank it was saved by) and
    every `.pt` file loads as plain data."""
    folder = Path(folder)
    states_file = next((folder / n for n in _STATES_FILES if (folder / n).is_file()), None)
    if states_file is None:
        raise DamagedCheckpoint(f"{folder}: no DeepSpeed model states file (mp_rank_00_model_states.pt)")
    states = None
    for path in sorted(folder.rglob("*.pt")):  # DeepSpeed loads these; a file it does not is checked too
        loaded = load_plain(path)
        if path == states_file:
            states = loaded
    if not isinstance(states, dict):
        raise DamagedCheckpoint(f"{states_file}: not DeepSpeed model states (no dictionary)")
    ranks, zero = _shape(states)
    for r in range(ranks):
        needed = [[f"rng_rank{r}.pt"]]
        if int(zero) >= 1:
            prefix = f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
            needed.append([prefix, f"bf16_{prefix}"])
        if int(zero) == 3:
            needed.append([f"zero_pp_rank_{r}_mp_rank_00_model_states.pt"])
        for names in needed:
            if not any((folder / n).is_file() for n in names):
                raise DamagedCheckpoint(
                    f"{folder / names[0]}: missing (the checkpoint was saved by {ranks} ranks; it is incomplete)"
                )


def saved_by(folder: str | Path) -> tuple[int, int]:
    """(ranks, ZeRO stage) of a verified checkpoint folder, from its model states (memory-mapped)."""
    folder = Path(folder)
    return _shape(load_plain(next(folder / n for n in _STATES_FILES if (folder / n).is_file())))


def _shape(states: dict) -> tuple[int, int]:
    """(ranks, ZeRO stage) that DeepSpeed's model states record."""
    zero = ((states.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0)
    return int(states.get("dp_world_size") or 1), int(zero)


def choose(run_dir: str | Path, tag: str | None = None) -> tuple[str, list[str]]:
    """The checkpoint to load and the damaged ones passed over (one line each, naming the file).

    A named `tag` (any spelling `resolve_tag` takes) must load; with none, the latest is tried, then
    each earlier one by step: the first that loads is chosen. A file that needs pickle beyond
    DeepSpeed's types is an error either way, never skipped: someone has to look at it."""
    if tag is not None and str(tag).strip() != LATEST:
        chosen = resolve_tag(run_dir, tag)
        verify(checkpoint_dir(run_dir) / chosen)
        return chosen, []
    latest = latest_tag(run_dir)
    if latest is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir)}: no complete checkpoint")
    earlier = [t for t in reversed(checkpoint_tags(run_dir)) if step_of(t) < step_of(latest)]
    skipped: list[str] = []
    for candidate in [latest, *earlier]:
        try:
            verify(checkpoint_dir(run_dir) / candidate)
        except DamagedCheckpoint as e:
            skipped.append(str(e))
            continue
        return candidate, skipped
    raise DamagedCheckpoint(
        f"{skipped[0]}" + ("; no earlier checkpoint loads either" if len(skipped) > 1 else "")
    )


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@functools.cache
def _saver() -> int:
    """Rank 0's pid, the same on every rank (broadcast once): the temporary name of a checkpoint is this
    run's own, and every rank writes its files into the same folder."""
    pid = [os.getpid()]
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(pid, src=0)
    return pid[0]


def save(
    engine, run_dir: str | Path, step: int, client_state: dict, keep: int, extra: dict | None = None
) -> Path:
    """Save on every rank (DeepSpeed shards the state); rank 0 also writes `extra` ({name: tensors},
    e.g. the EMA weights) as NAME.pt. Returns the finished checkpoint folder."""
    root = checkpoint_dir(run_dir)
    tag = f"step_{step:08d}"
    tmp = root / f"{tag}.{_saver()}.tmp"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:  # what a killed save left: the run folder's lock says no other run is writing
        for stale in root.iterdir() if root.is_dir() else ():
            if PENDING.fullmatch(stale.name) and stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
    _barrier()
    try:
        engine.save_checkpoint(str(root), tag=tmp.name, client_state=client_state, save_latest=False)
        torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
        if rank == 0:
            for name, tensors in (extra or {}).items():
                torch.save(tensors, tmp / f"{name}.pt")
    except (OSError, RuntimeError) as e:  # disk full or read-only (torch.save wraps it in RuntimeError)
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left for a resume to find
        before = latest_tag(run_dir)
        kept = f"{before} stays the latest" if before else "no earlier checkpoint"
        why = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0][:200]
        full = wrapped_disk_full(e, root) if isinstance(e, RuntimeError) else None
        if full is not None:  # torch.save's short write says only "unexpected pos ..."
            why = full.strerror
        raise CheckpointError(
            f"{root / tag}: the checkpoint could not be written ({why}); {kept}: free space or fix "
            "the folder, then run the same command with --resume auto"
        ) from None
    _barrier()
    if rank == 0:
        # every rank has finished its files: the checkpoint becomes step_N whole (one of the same step,
        # left by a continuation this run abandoned, is replaced), and only then does `latest` name it
        replace_dir(tmp, root / tag, _own_checkpoint, "trainer checkpoint")
        write_text(root / LATEST, tag + "\n")
        # by step number, and only earlier ones: later checkpoints (a run resumed from an earlier one
        # leaves them) are written over as the run reaches their steps
        earlier = [t for t in checkpoint_tags(run_dir) if step_of(t) < step]
        for old in earlier[: max(len(earlier) - (keep - 1), 0)]:
            if (root / old / "rng_rank0.pt").is_file():  # one this trainer wrote, not a folder of that name
                shutil.rmtree(root / old, ignore_errors=True)
    _barrier()
    return root / tag


def load(engine, run_dir: str | Path, tag: str | None = None) -> dict:
    """Restore the engine (weights, optimizer, LR schedule) and this rank's RNG; returns the client state.

    The checkpoint is verified first (`verify`): DeepSpeed itself unpickles without restriction."""
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise CheckpointError(f"{checkpoint_dir(run_dir)}: no complete checkpoint to resume from")
    verify(checkpoint_dir(run_dir) / tag)
    path, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    if path is None:
        raise DamagedCheckpoint(f"{checkpoint_dir(run_dir) / tag}: DeepSpeed could not load it")
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = checkpoint_dir(run_dir) / tag / f"rng_rank{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(_as_python_state(rng["python"]))
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return client_state


def _as_python_state(state) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


def load_extra(run_dir: str | Path, name: str, tag: str | None = None):
    """A tensors file `save` wrote beside a checkpoint (None when there is none), on the CPU: saved from a
    GPU, its tensors would otherwise come back on the device that saved them, GPU 0, on every rank."""
    tag = tag or latest_tag(run_dir)
    path = checkpoint_dir(run_dir) / str(tag) / f"{name}.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def taken(segments: list[dict], step: int) -> list[dict]:
    """The part of a step plan the first `step` steps followed."""
    return [
        {**seg, "steps": min(seg["steps"], step - seg["first_step"])}
        for seg in segments
        if seg["first_step"] < step
    ]


class Checkpointer:
    """The run's checkpoints: due every `checkpoint.every` steps and at the run's last step; each holds
    DeepSpeed's state (weights, optimizer, LR schedule), the run's own (step, tokens seen, the loader
    position, the manifest hash, the step plan) and the EMA weights."""

    def __init__(self, engine, ema, run_dir: Path, manifest: dict, cfg, segments: list[Segment], last: int):
        self.engine, self.ema, self.run_dir, self.manifest = engine, ema, run_dir, manifest
        self.every, self.keep, self.segments, self.last = (
            cfg.checkpoint.every,
            cfg.checkpoint.keep,
            segments,
            last,
        )
        self.saved_step = 0  # the step of the newest checkpoint of this run (0: none yet)

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def save(self, step: int, tokens_seen: int, loader_state: dict) -> None:
        client = {
            "step": step,
            "tokens_seen": tokens_seen,
            "loader": loader_state,
            "manifest_hash": self.manifest["manifest_hash"],
            "plan": describe_segments(self.segments),
        }
        extra = {"ema": self.ema.shadow} if self.ema is not None else None
        save(self.engine, self.run_dir, step, client, self.keep, extra)
        self.saved_step = step

    def restore(self, loader, tag: str) -> tuple[int, int]:
        """Restore a checkpoint of this run (engine, schedule, loader position, RNG, EMA); the step and the
        tokens seen it was saved at. The ramps must give the steps already taken the lengths and batches
        they had (the loader position counts sequences of those lengths)."""
        run_dir, manifest, ema = self.run_dir, self.manifest, self.ema
        try:
            state = load(self.engine, run_dir, tag)
        except CheckpointError:
            raise
        except ValueError as e:  # the schedule refuses a config whose restarts rewrite steps already taken
            raise CheckpointError(f"{checkpoint_dir(run_dir) / tag}: {e}") from None
        if state["manifest_hash"] != manifest["manifest_hash"]:
            raise CheckpointError(
                f"{run_dir} was trained on manifest {state['manifest_hash'][:16]}, not "
                f"{manifest['manifest_hash'][:16]}: resuming would read other data (use --init-from to "
                "start a new stage from its weights)"
            )
        plan = describe_segments(self.segments)
        if "plan" in state and taken(state["plan"], state["step"]) != taken(plan, state["step"]):
            raise CheckpointError(
                f"{run_dir}: data.seq_len_ramp / data.batch_ramp give the {state['step']} steps already taken "
                f"other lengths or batches than the checkpoint's ({taken(state['plan'], state['step'])}); set "
                "them as the run had them"
            )
        loader.load_state_dict(state["loader"])
        if ema is not None:
            shadow = load_extra(run_dir, "ema", tag)
            if shadow is None:
                raise CheckpointError(f"ema is set but {run_dir}'s checkpoint {tag} has no EMA weights")
            if shadow.keys() != ema.shadow.keys() or any(
                not torch.isfinite(t).all() or t.shape != ema.shadow[n].shape for n, t in shadow.items()
            ):
                raise CheckpointError(
                    f"{run_dir}: checkpoint {tag}'s EMA weights do not match the model's trainable weights "
                    "(other names or shapes, or not finite)"
                )
            # each beside its weight (on this rank's device), not where the checkpoint was written from
            ema.shadow = {n: t.to(ema.shadow[n].device) for n, t in shadow.items()}
        self.saved_step = state["step"]
        return state["step"], state["tokens_seen"]
