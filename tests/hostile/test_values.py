"""Hostile values in well-formed files: NaN and infinity for every numeric key of every command's
config, YAML whose aliases expand without bound, config paths that are not small regular files, stage
names that are paths. Each is refused by `cpt.config` (the one place values are read) with a line naming
the key, before any work, and quickly: nothing here walks or prints an expanded document."""

from __future__ import annotations

import dataclasses
import math
import random
import types
import typing

import pytest

from cpt.config import MAX_CONFIG_BYTES, ConfigError, apply_overrides, build, parse_yaml, read_yaml
from cpt.mix.stage import Stage, load_stage
from pipelines.clean import CleanConfig
from pipelines.dedup import DedupConfig
from pipelines.score import ScorePipelineConfig
from pipelines.tokenization import TokenizeConfig
from trainer.ablate import Grid
from trainer.config import TrainConfig, load_config

COMMANDS = {
    "clean": CleanConfig,
    "dedup": DedupConfig,
    "score": ScorePipelineConfig,
    "tokenize": TokenizeConfig,
    "cpt-mix build (stage)": Stage,
    "trainer": TrainConfig,
    "cpt ablate (grid)": Grid,
}


def _numeric_keys(cls: type, prefix: str = "") -> list[tuple[str, type]]:
    """(key path, int or float) of every numeric setting of a config dataclass, nested ones and those of
    list items (`sources[0].weight`) included."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, path = hints[f.name], f"{prefix}{f.name}"
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else tp
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            keys += _numeric_keys(typing.get_args(tp)[0], f"{path}[0].")
        elif dataclasses.is_dataclass(tp):
            keys += _numeric_keys(tp, f"{path}.")
        elif tp in (int, float):
            keys.append((path, tp))
    return keys


def _nested(path: str, value) -> dict:
    """{'a': {'b': [{'c': value}]}} for 'a.b[0].c'."""
    *parents, last = path.split(".")
    data: dict = {last.removesuffix("[0]"): [value] if last.endswith("[0]") else value}
    for part in reversed(parents):
        data = {part.removesuffix("[0]"): [data] if part.endswith("[0]") else data}
    return data


CASES = [(command, key, tp) for command, cls in COMMANDS.items() for key, tp in _numeric_keys(cls)]


def test_every_command_has_numeric_keys_to_probe():
    by_command = {c: sum(1 for command, _, _ in CASES if command == c) for c in COMMANDS}
    assert all(n > 0 for n in by_command.values()), by_command
    keys = {key for _, key, _ in CASES}
    assert {"optim.lr", "optim.weight_decay", "schedule.min_lr", "dirty_words.max_share", "langid.min_score",
            "sources[0].weight", "seq_len"} <= keys  # fmt: skip


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused_naming_the_key(value):
    for command, key, _ in CASES:
        with pytest.raises(ConfigError) as err:
            build(COMMANDS[command], _nested(key, value), "probe.yaml")
        assert f"{key}: expected a finite number" in str(err.value) or f"{key}: expected int" in str(
            err.value
        ), (command, key, str(err.value))


def test_yaml_spellings_of_nan_and_infinity_are_refused_from_files_and_overrides(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text("mix: m\nmodel: {path: p}\noptim: {lr: .inf}\n")
    with pytest.raises(ConfigError, match=r"optim.lr: expected a finite number, got inf"):
        load_config(config, [])
    with pytest.raises(ConfigError, match=r"schedule.min_lr: expected a finite number, got nan"):
        load_config(None, ["mix=m", "model.path=p", "schedule.min_lr=.nan"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected float, got 'inf'"):  # a string, not a number
        load_config(None, ["mix=m", "model.path=p", "optim.lr='inf'"])


def test_random_finite_values_give_a_config_or_a_config_error():
    """The range checks never raise anything but ConfigError, whatever finite number a key holds."""
    rng = random.Random(0)
    for command, key, tp in CASES:
        for _ in range(4):
            magnitude = 10.0 ** rng.randint(-12, 12) * rng.choice([-1, 1])
            value = int(magnitude) if tp is int else magnitude * rng.random()
            try:
                build(COMMANDS[command], _nested(key, value), "fuzz.yaml")
            except ConfigError:
                pass


def test_trainer_ranges_name_the_key():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["mix=m", "model.path=p", "checkpoint.every=0", "optim.weight_decay=-1",
                           "optim.clip=-0.5", "max_steps=0", "eval.every=-1"])  # fmt: skip
    text = str(err.value)
    for key in ("checkpoint.every: must be >= 1", "optim.weight_decay: must be >= 0", "optim.clip: must be >= 0",
                "max_steps: must be >= 1", "eval.every: must be >= 0"):  # fmt: skip
        assert key in text, text


def _laughs(levels: int = 9) -> str:
    """'Billion laughs': each level a list of ten aliases of the one before, 10**levels strings in all."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


@pytest.mark.parametrize("key", ["name", "languages", "mode", "seq_len"])
def test_an_alias_bomb_as_any_value_is_refused_at_once(tmp_path, key):
    path = tmp_path / "bomb.yaml"
    path.write_text(f"{_laughs()}\n{key}: *l9\n")
    with pytest.raises(ConfigError, match="aliases expand to more than") as err:
        read_yaml(path)
    assert str(path) in str(err.value) and len(str(err.value)) < 200
    with pytest.raises(ConfigError, match="override 'mode=.*aliases expand to more than"):
        apply_overrides({}, ["mode={" + _laughs().replace("\n", ", ") + "}"])


def test_aliases_within_bounds_still_work_and_a_recursive_one_is_refused():
    assert parse_yaml("a: &x {b: [1, 2]}\nc: *x\n") == {"a": {"b": [1, 2]}, "c": {"b": [1, 2]}}
    with pytest.raises(ConfigError, match="alias refers to the list or mapping that holds it"):
        parse_yaml("a: &x [1, *x]\n")


def test_a_long_value_is_shown_by_its_start_and_a_structure_by_its_size():
    many = "[" + ", ".join(["word"] * 5000) + "]"
    with pytest.raises(ConfigError) as err:
        load_config(None, ["mix=m", "model.path=p", f"mode={many}", "optim.lr=" + "1.5" * 5000])
    text = str(err.value)
    assert "mode: a list of 5,000 items is not one of" in text and len(text) < 1000, text
    assert "optim.lr: expected float, got '1.51.51.5" in text
    with pytest.raises(ConfigError, match=r"override 'seed=9999.*'\.\.\.: a value cannot be read") as err:
        load_config(None, ["mix=m", "model.path=p", "seed=" + "9" * 10_000])  # past Python's int() limit
    assert len(str(err.value)) < 300


def test_a_config_path_must_be_a_small_regular_file(tmp_path):
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match=r"big.yaml: .* bytes: a config is at most"):
        read_yaml(big)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError, match="binary.yaml: not UTF-8 text"):
        read_yaml(binary)


@pytest.mark.parametrize(
    "name", ["../../../../tmp/x", "/tmp/x", "a/b", "..", ".", "", "x" * 200, "名字 with space"]
)
def test_a_stage_name_is_a_plain_name(tmp_path, name):
    stage = tmp_path / "s.yaml"
    stage.write_text(
        f"name: {name!r}\nseq_len: 64\ntokens: 1000\nsources: [{{name: a, path: x, weight: 1}}]\n"
    )
    with pytest.raises(ConfigError, match="name: "):
        load_stage(stage)


def test_a_one_token_sequence_is_refused(tmp_path):
    stage = tmp_path / "s.yaml"
    stage.write_text("name: s\nseq_len: 1\ntokens: 1000\nsources: [{name: a, path: x, weight: 1}]\n")
    with pytest.raises(ConfigError, match=r"seq_len: must be an integer >= 8 \(got 1\)"):
        load_stage(stage)


def test_a_grid_name_is_a_plain_name_and_its_axes_finite(tmp_path):
    from trainer.ablate import load_grid

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        "name: ../../x\nconfig: c.yaml\nbase: {model: m, stage: s.yaml, steps: 2}\nstage: s.yaml\nsteps: 2\n"
        "eval: {old: a, new: b}\ncenter: {lr_scale: 1.0}\naxes: {lr_scale: [1.0, .nan]}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_grid(grid)
    assert "name: '../../x' must be a plain name" in str(err.value) and "axes.lr_scale[1]" in str(err.value)
