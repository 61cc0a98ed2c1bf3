"""benchmarks/gpu_check.py, the script a GPU machine runs first, kept working on CPU at its small size:
its table comes out whole, documents are kept apart, the chunked loss equals the plain one, and its
document check does find a leak where one is made."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.slow
def test_the_gpu_check_runs_small_on_cpu_and_prints_its_table(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--small", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + 2 + 3 + 3, proc.stdout  # header, rule, masks at 1 and 4, loss, training
    results = json.loads(out.read_text())
    assert set(results["masks"]) == {"1", "4"}
    assert all(m["masked"] < 1e-4 < 0.05 < m["unmasked"] for m in results["masks"].values())
    assert results["loss"]["max_loss_diff"] < 1e-5 and results["loss"]["max_grad_diff"] < 1e-5
    for side in ("cpt", "hf_trainer"):
        assert results["trainer"][side]["tokens_per_s"] > 0 and results["trainer"][side]["tree_rss_mib"] > 0


def test_the_document_check_finds_documents_that_see_each_other(monkeypatch):
    """Without transformers' packed-sequence detection every document of a row attends to the ones before
    it: the check must say so (and not with it)."""
    import gpu_check
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.config import TrainConfig
    from trainer.model import prepare_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")  # fmt: skip
    model = prepare_model(LlamaForCausalLM(config), TrainConfig(mix="x")).eval()
    kept = gpu_check.check_masks(model, torch.device("cpu"), 96, 200)
    assert all(gpu_check.kept_apart(m) for m in kept.values())
    import transformers.masking_utils as masking

    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    leaked = gpu_check.check_masks(model, torch.device("cpu"), 96, 200)
    assert not any(gpu_check.kept_apart(m) for m in leaked.values())
