"""Checkpoints: DeepSpeed's engine state plus what makes a resume exact, written so a crash never
leaves a checkpoint that looks complete.

Layout of a run folder:
    config.json                    the resolved TrainConfig (what export and init-from rebuild)
    checkpoints/step_00000040/     DeepSpeed's files, client state (step, loader state, manifest hash),
                                   rng_rank{r}.pt (each rank's torch and Python RNG)
    checkpoints/latest             the tag of the newest complete checkpoint
A checkpoint is written under `step_N.tmp`, renamed when every rank has finished, and only then named
in `latest` (itself written to a temporary file and renamed); the oldest beyond `keep` are removed.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

LATEST = "latest"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest_tag(run_dir: str | Path) -> str | None:
    path = checkpoint_dir(run_dir) / LATEST
    if not path.is_file():
        return None
    tag = path.read_text().strip()
    return tag if (checkpoint_dir(run_dir) / tag).is_dir() else None


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save(
    engine, run_dir: str | Path, step: int, client_state: dict, keep: int, extra: dict | None = None
) -> Path:
    """Save on every rank (DeepSpeed shards the state); rank 0 also writes `extra` ({name: tensors},
    e.g. the EMA weights) as NAME.pt. Returns the finished checkpoint folder."""
    root = checkpoint_dir(run_dir)
    tag = f"step_{step:08d}"
    tmp = root / f"{tag}.tmp"
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0 and tmp.exists():  # a crash during an earlier save of this step
        shutil.rmtree(tmp)
    _barrier()
    engine.save_checkpoint(str(root), tag=tmp.name, client_state=client_state, save_latest=False)
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        for name, tensors in (extra or {}).items():
            torch.save(tensors, tmp / f"{name}.pt")
    _barrier()
    if rank == 0:
        final = root / tag
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = root / f"{LATEST}.tmp"
        pointer.write_text(tag + "\n")
        os.replace(pointer, root / LATEST)
        for old in sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))[
            :-keep
        ]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return root / tag


def load(engine, run_dir: str | Path, tag: str | None = None) -> dict:
    """Restore the engine (weights, optimizer, LR schedule) and this rank's RNG; returns the client state."""
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint to resume from")
    path, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag)
    if path is None:
        raise FileNotFoundError(f"{checkpoint_dir(run_dir) / tag}: DeepSpeed could not load it")
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
    """A tensors file `save` wrote beside a checkpoint (None when there is none)."""
    tag = tag or latest_tag(run_dir)
    path = checkpoint_dir(run_dir) / str(tag) / f"{name}.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None
