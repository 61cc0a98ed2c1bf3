"""The trainer's LR schedule object and its per-source loss sums, without DeepSpeed: the LRs each step
gets, what a checkpoint keeps of the schedule, `schedule.on_resume`, and the window losses."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ScheduleConfig
from trainer.metrics import SourceLosses
from trainer.schedule import Schedule, lr_multiplier

PEAK, TOTAL = 3e-3, 20
FLOOR = 3e-4 / PEAK  # min_lr / lr, as the trainer computes it


def _optimizer() -> torch.optim.Optimizer:
    weights = [torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.AdamW([{"params": weights[:1]}, {"params": weights[1:]}], lr=PEAK)


def _schedule(**config) -> Schedule:
    cfg = ScheduleConfig(**{"kind": "cosine", "warmup_ratio": 0.1, "min_lr": 3e-4, **config})
    return Schedule(_optimizer(), cfg, PEAK, TOTAL)


def _run(schedule: Schedule, steps: int) -> list[float]:
    """The LR each of `steps` optimizer steps uses, as the trainer reads it (then DeepSpeed steps it)."""
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.get_last_lr()[0])
        schedule.step()
    return lrs


@pytest.mark.parametrize("kind", ["cosine", "constant", "wsd"])
def test_each_step_gets_the_peak_times_the_multiplier_on_every_group(kind):
    schedule = _schedule(kind=kind, decay_ratio=0.3)
    lrs = _run(schedule, TOTAL)
    assert lrs == [PEAK * lr_multiplier(s, TOTAL, kind, 0.1, FLOOR, 0.3) for s in range(TOTAL)]
    assert [g["lr"] for g in schedule.optimizer.param_groups] == [schedule.get_last_lr()[0]] * 2


def test_a_restored_schedule_continues_exactly():
    whole = _run(_schedule(), TOTAL)
    first = _schedule()
    _run(first, 7)
    state = first.state_dict()
    assert state["step"] == 7 and state["restart_step"] == 0
    second = _schedule()
    second.load_state_dict(state)
    assert second.get_last_lr() == first.get_last_lr()
    assert _run(second, TOTAL - 7) == whole[7:]


def test_on_resume_rewarm_and_constant_re_anchor_and_the_checkpoint_keeps_the_anchor():
    reached = PEAK * lr_multiplier(10, TOTAL, "cosine", 0.1, FLOOR)
    for mode, expected in (
        ("constant", [reached] * 10),
        ("rewarm", [PEAK * lr_multiplier(s, TOTAL - 10, "cosine", 0.1, FLOOR) for s in range(10)]),
        ("continue", [PEAK * lr_multiplier(s, TOTAL, "cosine", 0.1, FLOOR) for s in range(10, TOTAL)]),
    ):
        before = _schedule()
        _run(before, 10)
        resumed = _schedule(on_resume=mode)
        resumed.load_state_dict(before.state_dict())
        assert resumed.on_resume(10) == (mode != "continue")
        lrs = _run(resumed, 4)
        # saved at step 14 and resumed with the default `continue`: the anchored schedule goes on
        again = _schedule()
        again.load_state_dict(resumed.state_dict())
        assert again.on_resume(14) is False
        assert lrs + _run(again, 6) == expected, mode


def test_on_resume_at_step_zero_changes_nothing():
    schedule = _schedule(on_resume="rewarm")
    assert schedule.on_resume(0) is False and schedule.get_last_lr()[0] == PEAK * 0.5  # warmup of 2 steps


def test_a_checkpoint_of_a_torch_lambda_lr_still_resumes():
    optimizer = _optimizer()
    old = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, TOTAL, "cosine", 0.1, FLOOR)
    )
    for _ in range(5):
        optimizer.step()
        old.step()
    schedule = _schedule()
    schedule.load_state_dict(old.state_dict())
    assert schedule.step_count == 5 and schedule.get_last_lr() == old.get_last_lr()
    _run(schedule, 1)
    optimizer.step()
    old.step()
    assert schedule.get_last_lr() == old.get_last_lr()


@pytest.fixture
def one_rank_group():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def test_source_losses_sum_by_source_and_start_a_new_window(one_rank_group):
    totals = SourceLosses(["zh_web", "en_web", "unused"], "cpu")
    losses = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    totals.add(losses, mask, torch.tensor([1, 0]))
    totals.add(torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[True, False, False]]), torch.tensor([0]))
    window = totals.reduce()
    assert window.loss == pytest.approx(21.0 / 6)
    assert window.by_source == {"loss/zh_web": pytest.approx(15.0 / 3), "loss/en_web": pytest.approx(2.0)}
    assert list(window.by_source) == ["loss/zh_web", "loss/en_web"]  # the manifest's order, as logged
    empty = totals.reduce()
    assert empty.loss == 0.0 and empty.by_source == {}
