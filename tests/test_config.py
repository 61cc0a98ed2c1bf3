from __future__ import annotations

import os

import pytest

from cpt.config import ConfigError
from pipelines.clean import DEFAULT_CONFIG, load_config


def test_shipped_clean_config_loads_and_validates():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.languages == ["en", "zh"]
    assert cfg.steps[0] == "url_filter" and "pii" in cfg.steps
    assert cfg.heuristics["gopher_quality"]["zh"]["min_avg_word_length"] == 1
    assert cfg.url_filter.block_list.endswith("url_blocklist.txt")


def test_unknown_keys_and_bad_values_are_all_reported_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "langid: {min_scor: 0.5}\n"
        "extract: {backend: lynx}\n"
        "write: {rows_per_group: many}\n"
        "heuristics: {gopher_quality: {zh: {min_words: 3}}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    text = str(err.value)
    assert str(bad) in text
    assert "langid.min_scor: unknown key" in text
    assert "extract.backend: 'lynx' is not one of" in text
    assert "write.rows_per_group: expected int" in text
    assert "heuristics.gopher_quality.zh.min_words: not a setting of GopherQualityFilter" in text


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("languages: [en, zh\nsteps: []\n")
    with pytest.raises(ConfigError, match=r"broken.yaml.*line \d+"):
        load_config(bad)


def test_command_line_overrides_are_typed_and_validated():
    cfg = load_config(DEFAULT_CONFIG, ["langid.min_score=0.3", "languages=[en]"])
    assert cfg.langid.min_score == 0.3 and cfg.languages == ["en"]
    with pytest.raises(ConfigError, match="must be within"):
        load_config(DEFAULT_CONFIG, ["langid.min_score=3"])
    with pytest.raises(ConfigError, match="unknown step"):
        load_config(DEFAULT_CONFIG, ["steps=[extract, dedup]"])


def test_every_shipped_pipeline_config_loads():
    from pipelines import clean, dedup, score, tokenization
    from trainer.config import load_config as load_trainer_config

    loaders = {
        "clean": clean.load_config,
        "dedup": dedup.load_config,
        "score": score.load_config,
        "tokenize": tokenization.load_config,
    }
    configs = sorted(DEFAULT_CONFIG.parent.glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        loaders[path.stem.split("_")[0]](path)
    trainer_configs = sorted((DEFAULT_CONFIG.parent.parent.parent / "trainer" / "configs").glob("*.yaml"))
    assert {p.stem for p in trainer_configs} == {"cpt", "demo", "long_context"}
    for path in trainer_configs:  # the run names its stage and model on the command line
        cfg = load_trainer_config(path, ["mix=stage1", "model.path=some/model"])
        assert cfg.optim.betas == [0.9, 0.95] and cfg.optim.clip == 1.0


def test_local_runs_use_at_most_the_cpus_the_process_may_use_unless_asked(tmp_path):
    from pipelines.common import SlurmConfig, available_cpus, make_executor

    cpus = available_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cpus <= len(os.sched_getaffinity(0))
    many = make_executor("local", [], cpus + 6, tmp_path / "a", SlurmConfig())
    assert many.workers == cpus
    asked = make_executor("local", [], cpus + 6, tmp_path / "b", SlurmConfig(), workers=cpus + 3)
    assert asked.workers == cpus + 3  # more than the CPUs, because the user asked
    few = make_executor("local", [], 1, tmp_path / "c", SlurmConfig(), workers=4)
    assert few.workers == 1  # never more workers than tasks


def test_the_zero_stage_is_chosen_by_the_ranks_unless_named():
    from trainer.config import load_config as load_trainer_config

    def stages(*overrides: str) -> tuple[int, int]:
        cfg = load_trainer_config(None, ["mix=x", "model.path=m", *overrides]).deepspeed
        return cfg.stage_for(1), cfg.stage_for(8)

    assert stages("deepspeed.bf16=false") == (0, 2)  # one rank: nothing to partition
    assert stages("deepspeed.bf16=true") == (2, 2)  # fp32 masters and fp32 gradient sums
    assert stages("deepspeed.bf16=false", "deepspeed.offload=cpu") == (2, 2)  # offload needs ZeRO
    assert stages("deepspeed.zero_stage=3") == (3, 3)
