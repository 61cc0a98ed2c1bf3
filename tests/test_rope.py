"""`model.rope`: a stage longer than the model's context changes its RoPE and length; the run, the export,
a stage started --init-from it and a resumed run all build the model with that RoPE."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from trainer_setup import SEQ_LEN, build_small_setup, packed_and_alone_losses, run_train

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs

OLD = SEQ_LEN // 2  # the base model's positions: the stage's sequences are twice as long
ROPE = f"model.rope={{theta: 40000.0, scaling: {{rope_type: linear, factor: 2.0}}, max_position_embeddings: {SEQ_LEN * 4}}}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    s = build_small_setup(tmp_path_factory.mktemp("rope"))
    config = s["model"] / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "max_position_embeddings": OLD}, indent=2))
    return s


def dry_run(setup, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
         "--output", str(setup["root"] / "dry"), "--dry-run", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_stage_longer_than_the_model_needs_its_rope_changed(setup):
    proc = dry_run(setup)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert f"seq_len {SEQ_LEN} is longer than the {OLD} positions" in proc.stderr
    assert "model.rope" in proc.stderr
    bad = dry_run(setup, "--set", "model.rope={scaling: {rope_type: linear}, max_position_embeddings: 256}")
    assert bad.returncode == 2 and "model.rope" in bad.stderr and "factor" in bad.stderr, bad.stderr[-2000:]
    assert len(bad.stderr.strip().splitlines()) == 1
    assert dry_run(setup, "--set", ROPE).returncode == 0


def rotary(model) -> torch.Tensor:
    return model.model.rotary_emb.inv_freq.float()


def test_the_export_declares_the_rope_and_length_and_generates_past_the_old_one(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export import main as export_main

    run = tmp_path / "long"
    steps = ["--set", "max_steps=2", "--set", "eval.every=0", "--set", "checkpoint.every=2"]
    run_train(setup, run, "--set", ROPE, *steps, ranks=1)
    assert json.loads((run / "config.json").read_text())["model"]["rope"]["theta"] == 40000.0
    out = tmp_path / "hf"
    assert export_main(["--checkpoint", str(run), "--output", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == SEQ_LEN * 4
    assert config["rope_parameters"] == {"rope_theta": 40000.0, "rope_type": "linear", "factor": 2.0}
    model = AutoModelForCausalLM.from_pretrained(out)
    head_dim = model.config.head_dim
    expected = 1.0 / (40000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim)) / 2.0
    assert torch.allclose(rotary(model), expected)
    base = AutoModelForCausalLM.from_pretrained(setup["model"])
    assert not torch.allclose(rotary(base), expected)  # the base's RoPE is another
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("中文 English " * SEQ_LEN, return_tensors="pt").input_ids[:, : OLD * 2]
    generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == OLD * 2 + 4  # past the base's positions

    # a stage started from it keeps its RoPE (its config gives none), and so does that stage's export
    after = tmp_path / "after"
    run_train(setup, after, "--init-from", str(run), *steps, ranks=1)
    assert json.loads((after / "config.json").read_text())["model"]["rope"] == {
        "theta": 40000.0,
        "scaling": {"rope_type": "linear", "factor": 2.0},
        "max_position_embeddings": SEQ_LEN * 4,
    }
    out2 = tmp_path / "hf2"
    assert export_main(["--checkpoint", str(after), "--output", str(out2)]) == 0
    assert json.loads((out2 / "config.json").read_text())["rope_parameters"] == config["rope_parameters"]

    # resumed: the run's own RoPE, from its config.json; another is refused with one line
    proc = subprocess.run(
        [sys.executable, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
         "--output", str(run), "--resume", "--set", "model.rope.theta=10000.0", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "a resumed run keeps its RoPE" in proc.stderr, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1
    resumed = subprocess.run(
        [sys.executable, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
         "--output", str(run), "--resume", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_document_masking_holds_at_the_new_length_under_the_new_rope(setup):
    """A document's token losses inside a pack past the base's positions equal its losses alone."""
    from trainer.config import RopeConfig, TrainConfig
    from trainer.model import load_model

    cfg = TrainConfig(mix="x")
    cfg.model.path = str(setup["model"])
    cfg.model.rope = RopeConfig(theta=40000.0, scaling={"rope_type": "linear", "factor": 2.0},
                                max_position_embeddings=SEQ_LEN * 4)  # fmt: skip
    model, _ = load_model(cfg)
    assert model.config.max_position_embeddings == SEQ_LEN * 4 > OLD
    model.eval()
    lengths = [70, 110, 56]  # 236 tokens, the longest past OLD alone
    inside, alone, plain = packed_and_alone_losses(model, lengths, seed=1)
    start = 0
    for n, losses in zip(lengths, alone, strict=True):
        assert torch.allclose(inside[start : start + n - 1], losses, atol=1e-5)
        start += n
    assert not torch.allclose(plain[70:179], inside[70:179], atol=1e-3)


def test_tiny_model_takes_its_familys_rope_and_never_writes_into_a_folder(setup, tmp_path):
    """`python -m cpt.demo.tiny_model`: a SentencePiece tokenizer gives LLaMA 2's RoPE base and context,
    `--family llama3` Llama 3's; a folder that holds anything is refused in one line, untouched."""
    from conftest import llama3_tokenizer
    from cpt.demo.tiny_model import family_of

    def tiny(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cpt.demo.tiny_model", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=300)  # fmt: skip

    tok = setup["root"] / "tok"
    assert family_of(tok) == "llama2" and family_of(llama3_tokenizer()) == "llama3"
    for family, theta, context in ((None, 10_000, 4096), ("llama3", 500_000, 8192)):
        out = tmp_path / str(family)
        proc = tiny("--tokenizer", str(tok), "--output", str(out), "--hidden", "16", "--layers", "1",
                    *(["--family", family] if family else []))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        config = json.loads((out / "config.json").read_text())
        rope = config.get("rope_parameters") or {}
        assert rope.get("rope_theta", config.get("rope_theta")) == theta
        assert config["max_position_embeddings"] == context
    before = sorted(p.name for p in out.iterdir())
    proc = tiny("--tokenizer", str(tok), "--output", str(out))
    assert (
        proc.returncode == 2 and proc.stderr.startswith("error:") and "exists and is not empty" in proc.stderr
    )
    assert sorted(p.name for p in out.iterdir()) == before
