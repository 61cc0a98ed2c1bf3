"""The trainer's LR schedule object and its per-source loss sums, without DeepSpeed: the LRs each step
gets, planned restarts (`schedule.restarts`), what a checkpoint keeps of the schedule, and the window
losses."""

from __future__ import annotations

import pytest
import torch

from trainer.config import ConfigError, ScheduleConfig
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


def _restored(state: dict, **config) -> Schedule:
    schedule = _schedule(**config)
    schedule.load_state_dict(state)
    return schedule


def _multipliers(steps, total=TOTAL) -> list[float]:
    return [PEAK * lr_multiplier(s, total, "cosine", 0.1, FLOOR) for s in steps]


def test_a_restored_schedule_continues_exactly():
    whole = _run(_schedule(), TOTAL)
    first = _schedule()
    _run(first, 7)
    state = first.state_dict()
    assert state["step"] == 7 and state["restarts"] == []
    second = _restored(state)
    assert second.get_last_lr() == first.get_last_lr()
    assert _run(second, TOTAL - 7) == whole[7:]


def test_a_rewarm_restart_warms_up_again_and_decays_to_the_floor_at_the_stage_end():
    lrs = _run(_schedule(restarts=[10], restart="rewarm"), TOTAL)
    assert lrs[:10] == _multipliers(range(10))  # the plain schedule up to the restart
    # a warmup of 10% of the 10 steps left (one step) puts step 10 back at the peak, then cosine to the floor
    assert lrs[10] == PEAK and lrs[10:] == _multipliers(range(10), TOTAL - 10)
    assert lrs[-1] == pytest.approx(3e-4) and lrs[9] < lrs[10] and lrs[12] < lrs[11]


def test_a_constant_restart_holds_the_lr_the_schedule_had_reached():
    lrs = _run(_schedule(restarts=[10], restart="constant"), TOTAL)
    reached = _multipliers([10])[0]
    assert lrs[:10] == _multipliers(range(10)) and lrs[10:] == [reached] * 10
    assert 3e-4 < reached < PEAK


def test_each_restart_applies_the_earlier_ones():
    rewarm = _run(_schedule(restarts=[6, 12], restart="rewarm"), TOTAL)
    assert rewarm[6:12] == _multipliers(range(6), TOTAL - 6)
    assert rewarm[12:] == _multipliers(range(8), TOTAL - 12)
    # constant: the LR held from step 6 is what step 12 has reached, so it stays held
    constant = _run(_schedule(restarts=[6, 12], restart="constant"), TOTAL)
    assert constant[6:] == [_multipliers([6])[0]] * 14


@pytest.mark.parametrize("restarts", [[10], [6, 12]])
@pytest.mark.parametrize("restart", ["rewarm", "constant"])
def test_a_schedule_restored_once_or_twice_anywhere_follows_the_uninterrupted_one(restarts, restart):
    config = {"restarts": restarts, "restart": restart}
    whole = _run(_schedule(**config), TOTAL)
    for first_stop in range(TOTAL + 1):  # before, at and after each restart
        first = _schedule(**config)
        lrs = _run(first, first_stop)
        state = first.state_dict()
        assert _run(_restored(state, **config), TOTAL - first_stop) == whole[first_stop:], first_stop
        for second_stop in range(first_stop, TOTAL + 1):  # a crash after the first resume
            second = _restored(state, **config)
            again = lrs + _run(second, second_stop - first_stop)
            again += _run(_restored(second.state_dict(), **config), TOTAL - second_stop)
            assert again == whole, (first_stop, second_stop)


def test_changing_the_restarts_of_steps_already_taken_is_refused():
    run = _schedule(restarts=[10], restart="rewarm")
    _run(run, 10)  # about to take step 10: its restart has set the LRs the checkpoint holds
    at_restart = run.state_dict()
    _run(run, 2)
    after = run.state_dict()
    for state, config in (
        (at_restart, {}),
        (after, {}),
        (after, {"restarts": [8]}),
        (after, {"restarts": [10], "restart": "constant"}),
        (after, {"restarts": [4, 10]}),
    ):
        with pytest.raises(
            ValueError, match=r"^schedule\.restarts differ from the checkpoint's for steps already"
        ):
            _restored(state, **config)


def test_restarts_after_the_restored_step_come_from_the_config():
    before = _schedule(restarts=[10])
    _run(before, 8)
    state = before.state_dict()
    # planned later, or dropped before it was reached: the run follows the config from here on
    for config in ({"restarts": [10, 15]}, {"restarts": [15], "restart": "constant"}, {}):
        assert _run(_restored(state, **config), TOTAL - 8) == _run(_schedule(**config), TOTAL)[8:], config


def test_a_checkpoint_of_the_on_resume_releases_still_resumes():
    anchored = {"step": 14, "base_lrs": [PEAK, PEAK], "restart_step": 10, "restart_mode": "rewarm"}
    anchored["lrs"] = [PEAK * lr_multiplier(4, TOTAL - 10, "cosine", 0.1, FLOOR)] * 2
    whole = _run(_schedule(restarts=[10], restart="rewarm"), TOTAL)
    resumed = _restored(anchored, restarts=[10], restart="rewarm")
    assert resumed.step_count == 14 and _run(resumed, TOTAL - 14) == whole[14:]
    with pytest.raises(ValueError, match=r"checkpoint has \[10\] rewarm, the config none"):
        _restored(anchored)
    never = {"step": 5, "base_lrs": [PEAK, PEAK], "lrs": _multipliers([5]) * 2}
    for state in (never, {**never, "restart_step": 0, "restart_mode": "continue"}):
        assert _run(_restored(state), TOTAL - 5) == _run(_schedule(), TOTAL)[5:]


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


def _config(*overrides: str):
    from trainer.config import load_config

    return load_config(None, ["mix=stage2", "model.path=model", *overrides])


def test_restarts_are_set_from_the_command_line_and_checked():
    cfg = _config("schedule.restarts=[4, 9]", "schedule.restart=constant")
    assert cfg.schedule.restarts == [4, 9] and cfg.schedule.restart == "constant"
    for bad in ("[0]", "[5, 5]", "[9, 4]"):
        with pytest.raises(ConfigError, match=r"^command line: schedule\.restarts: optimizer steps > 0"):
            _config(f"schedule.restarts={bad}")


def test_on_resume_is_refused_with_what_replaces_it():
    with pytest.raises(ConfigError) as e:
        _config("schedule.on_resume=rewarm")
    message = str(e.value)
    assert (
        "\n" not in message
        and "schedule.restarts: [STEP]" in message
        and "schedule.restart: rewarm" in message
    )
    # what the config.json of every earlier run holds (read again by --init-from and export) changes nothing
    assert _config("schedule.on_resume=continue").schedule.restarts == []


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
    # the source of every input token; a loss belongs to the token it predicts (the next one), and the
    # first row packs an en_web document before a zh_web one
    totals.add(losses, mask, torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]]))
    # a masked target (padding) counts for no source, not even the one its id names
    totals.add(
        torch.tensor([[6.0, 0.0, 0.0]]), torch.tensor([[True, False, False]]), torch.tensor([[0, 0, 2, 2]])
    )
    window = totals.reduce()
    assert window.loss == pytest.approx(21.0 / 6)
    assert window.by_source == {"loss/zh_web": pytest.approx(20.0 / 5), "loss/en_web": pytest.approx(1.0)}
    assert list(window.by_source) == ["loss/zh_web", "loss/en_web"]  # the manifest's order, as logged
    empty = totals.reduce()
    assert empty.loss == 0.0 and empty.by_source == {}
