"""Starting the run's processes and its DeepSpeed engine: the process group and this rank's device (as
DeepSpeed's accelerator has them), the model (from the model folder or another run's checkpoint), the
DeepSpeed config the trainer's config gives, and the engine with its optimizer and LR schedule."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from trainer.config import TrainConfig
from trainer.model import load_model, parameter_groups, pick_attention, prepare_model
from trainer.preflight import Start
from trainer.schedule import Schedule, Segment, segment_of


def deepspeed_config(cfg: TrainConfig) -> dict:
    zero: dict = {"stage": cfg.deepspeed.zero_stage}
    if cfg.deepspeed.offload == "cpu":
        zero["offload_optimizer"] = {"device": "cpu"}
        if cfg.deepspeed.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": cfg.data.micro_batch_size,
        "gradient_accumulation_steps": cfg.data.gradient_accumulation,
        "gradient_clipping": cfg.optim.clip,
        "bf16": {"enabled": cfg.deepspeed.bf16},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.deepspeed.bf16 and cfg.deepspeed.zero_stage >= 2:
        # the micro-steps' gradients summed in fp32, not bf16 (8 bits of mantissa: a sum of 8 loses the
        # small ones). At ZeRO 2-3 DeepSpeed keeps its checkpoint layout; at ZeRO 1 it would switch to its
        # BF16 optimizer, whose checkpoints its own zero_to_fp32 (what export reads) cannot read, and
        # without ZeRO it offers no fp32 sums: both sum in bf16
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def release_shared_memory(rank: int) -> None:
    """Remove the name of this rank's segment of DeepSpeed's CPU all-reduce from /dev/shm.

    On CPU, DeepSpeed maps a 67 MB shared-memory segment a rank (`deepspeed_allreduce_buffer_<uid>_<addr>_
    <port>_<rank>`, opened by name by every other rank) and never unlinks it: each run, finished or killed,
    left its segments in /dev/shm, which is memory, until the machine ran out (a test suite's runs filled
    24 GB). Once every rank has opened the others' (a barrier after DeepSpeed's initialisation), the names
    are no longer needed; the mappings stay valid, and the memory goes back when the processes exit."""
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu" or not torch.distributed.is_initialized():
        return
    torch.distributed.barrier()
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    Path(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}").unlink(missing_ok=True)


def init_distributed(rank: int) -> torch.device:
    """Join the process group and return this rank's device, both as DeepSpeed's accelerator has them
    (`DS_ACCELERATOR`, else the one it detects: NCCL and a GPU, or gloo and the CPU), so that the engine
    and the trainer never disagree (`DS_ACCELERATOR=cpu` on a machine with a GPU trains on the CPU)."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    deepspeed.init_distributed(dist_backend=accelerator.communication_backend_name())
    release_shared_memory(int(os.environ.get("RANK", 0)))
    device = torch.device("cpu")
    if accelerator.device_name() != "cpu":
        # a Slurm step that binds one GPU a task shows each rank one device, whatever its LOCAL_RANK
        index = int(os.environ.get("LOCAL_RANK", 0)) % max(accelerator.device_count(), 1)
        accelerator.set_device(index)
        device = torch.device(accelerator.device_name(index))
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    return device


def init_model(cfg: TrainConfig, start: Start, rank: int):
    """`--init-from RUN[:step_N]`: the model built from that run's checkpoint, held in memory (nothing is
    written). Rank 0 reads the weights (the module states, memory-mapped: what a bf16 export of it would
    hold; a ZeRO-3 checkpoint is read through its fp32 masters); the other ranks build the architecture
    only, and DeepSpeed's initialize broadcasts rank 0's parameters to them (it does so for every model not
    built under zero.Init, before ZeRO partitions anything), so the weights are read once per run, not
    once per rank."""
    from trainer.run_folder import trained_model

    attention = pick_attention(cfg.model.attention)
    model, _, _ = trained_model(
        start.init_source, start.init_tag, masters=False, attention=attention, weights=rank == 0,
        rope=cfg.model.rope,
    )  # fmt: skip
    return prepare_model(model, cfg), attention


def model_for(cfg: TrainConfig, start: Start, rank: int):
    """The model the run starts from (another run's checkpoint with --init-from, else the model folder),
    its attention implementation and where it came from, for the log."""
    from trainer import checkpoint

    if start.init_tag:
        model, attention = init_model(cfg, start, rank)
        return model, attention, f"{checkpoint.checkpoint_dir(start.init_source) / start.init_tag}"
    model, attention = load_model(cfg)
    return model, attention, cfg.model.path


def lr_scale(cfg: TrainConfig, segments: list[Segment]):
    """A batch ramp's LR rule: a step whose batch is B runs at sqrt(B / the last batch) of the LR (the
    square-root rule: scale with the square root of the batch-size ratio); None without a ramp or with ramp_lr none."""
    if not cfg.data.batch_ramp or cfg.data.ramp_lr == "none" or not segments:
        return None
    last = segments[-1].batch
    return lambda step: (segment_of(segments, step).batch / last) ** 0.5


def build_engine(cfg: TrainConfig, model, stage_steps: int, anneal: int = 0, scale=None):
    """The DeepSpeed engine (AdamW, or DeepSpeed's CPU Adam with optimizer offload) and its LR schedule,
    which spans the whole stage even when the run stops early."""
    import deepspeed

    groups = parameter_groups(model, cfg.optim.weight_decay)
    betas = tuple(cfg.optim.betas)
    if cfg.deepspeed.offload == "cpu":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        optimizer = DeepSpeedCPUAdam(groups, lr=cfg.optim.lr, betas=betas, eps=cfg.optim.eps)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas, eps=cfg.optim.eps)
    engine, _, _, schedule = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        # built on the optimizer DeepSpeed keeps (its empty groups dropped); saved with every checkpoint
        lr_scheduler=lambda kept: Schedule(kept, cfg.schedule, cfg.optim.lr, stage_steps, anneal, scale),
        config=deepspeed_config(cfg),
    )
    return engine, schedule
