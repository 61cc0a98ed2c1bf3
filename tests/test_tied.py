"""A base whose head is its input embedding (`tie_word_embeddings`, as Llama-3.2-1B and Qwen2): every training
mode trains that one matrix once, and the export reloads to exactly the weights and logits that trained."""

from __future__ import annotations

import pytest
import torch

from trainer_setup import SEQ_LEN, build_small_setup, run_train

pytestmark = pytest.mark.slow  # DeepSpeed trainer runs

HEAD, EMBEDDING = "lm_head.weight", "model.embed_tokens.weight"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_small_setup(tmp_path_factory.mktemp("tied"), tied=True)


def test_the_tiny_model_can_be_built_tied(setup):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(setup["model"])
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight is model.model.embed_tokens.weight


def _checkpoint_matrix(state: dict, name: str) -> torch.Tensor:
    """The one trained tensor of the head or the embedding in a checkpoint, whatever the mode named it."""
    module = name.removesuffix(".weight")
    keys = [
        k
        for k in state
        if k.endswith(f"{module}.weight") or k.endswith(f"{module}.modules_to_save.default.weight")
    ]
    trained = [k for k in keys if "modules_to_save" in k] or keys
    assert len(trained) == 1, (name, keys)
    return state[trained[0]]


def _training_logits(run_dir, tag: str, ids: torch.Tensor) -> torch.Tensor:
    """Logits of the model as the trainer built it (`prepare_model`, LoRA unmerged) with the checkpoint's weights."""
    from transformers import AutoModelForCausalLM

    from trainer.model import prepare_model
    from trainer.run_folder import full_state_dict, run_config

    cfg = run_config(run_dir)
    model = prepare_model(AutoModelForCausalLM.from_pretrained(cfg.model.path, dtype=torch.float32), cfg)
    missing, unexpected = model.load_state_dict(full_state_dict(run_dir, tag), strict=False)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("mode", ["full", "embeddings", "lora"])
def test_a_tied_base_exports_what_trained_in_every_mode(setup, tmp_path, mode):
    from transformers import AutoModelForCausalLM

    from trainer.export import export
    from trainer.run_folder import full_state_dict, trained_model

    out = tmp_path / mode
    run_train(setup, out, f"mode={mode}", "max_steps=4", "eval.sets=[]", "lora.r=4", "lora.alpha=8", ranks=1)
    trained, _, tag = trained_model(out)
    reloaded = AutoModelForCausalLM.from_pretrained(
        export(out, tmp_path / f"{mode}_hf", dtype=torch.float32), dtype=torch.float32
    )

    # the reload is exactly the model rebuilt from the checkpoint, and its config says whether the head is tied
    trained_state, reloaded_state = trained.state_dict(), reloaded.state_dict()
    assert sorted(reloaded_state) == sorted(trained_state)
    for name, weight in trained_state.items():
        assert torch.equal(reloaded_state[name], weight), name
    tied = reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    assert reloaded.config.tie_word_embeddings == tied

    # its head and embedding are the ones that trained, not the base's
    state = full_state_dict(out, tag)
    base = AutoModelForCausalLM.from_pretrained(setup["model"], dtype=torch.float32)
    for name in (HEAD, EMBEDDING):
        assert torch.equal(reloaded_state[name], _checkpoint_matrix(state, name)), name
        assert not torch.equal(reloaded_state[name], base.state_dict()[name]), name
    # in every mode the two names share one Parameter: the tied matrix trained once, as the base has it
    assert tied and reloaded.config.tie_word_embeddings

    # and it computes what the trained model computed: the head that trained is the head used
    ids = torch.randint(3, 1000, (2, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = reloaded.eval()(input_ids=ids).logits
    torch.testing.assert_close(logits, _training_logits(out, tag, ids), rtol=1e-5, atol=1e-5)
