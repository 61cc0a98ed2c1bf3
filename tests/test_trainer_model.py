"""trainer/model.py without DeepSpeed: the loss taken a chunk of tokens at a time
(`chunked_token_losses`) equals the plain computation from the whole batch's logits (every token's loss
and every trainable parameter's gradient, in each training mode, on a padded, packed batch of two
sequences drawn from two sources), and the datasheet peak that MFU divides by."""

from __future__ import annotations

import pytest
import torch

from trainer.config import TrainConfig
from trainer.model import causal_lm, datasheet_tflops, prepare_model, token_losses

VOCAB, LENGTH = 320, 24


def tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(config).float()


def packed_batch() -> dict:
    """Two sequences: the first packs documents of 10, 9 and 5 tokens (positions restart at each, a
    document's first token is no target), the second a document of 15 tokens and 9 of padding."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, LENGTH), generator=g)
    positions = torch.stack(
        [
            torch.cat([torch.arange(10), torch.arange(9), torch.arange(5)]),
            torch.cat([torch.arange(15), torch.arange(9)]),
        ]
    )
    labels = ids.clone()
    labels[positions == 0] = -100
    labels[1, 15:] = -100  # padding
    ids[1, 15:] = 0
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def losses_and_grads(model, batch, chunked: bool):
    """Per-token losses and the gradients of a weighted sum of them (source weights as a stage's step
    normalisation gives: the second sequence's tokens count 3x), the plain way or the chunked way."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # LoRA's dropout draws the same masks in both computations
    if chunked:
        losses, mask = token_losses(model, batch, "cpu")
    else:
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        targets = batch["labels"][:, 1:]
        flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        losses = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), reduction="none").view_as(
            targets
        )
        mask = targets != -100
    weights = torch.tensor([[1.0], [3.0]])
    (losses * mask * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return (losses * mask).detach(), grads


@pytest.mark.parametrize(
    ("mode", "tied", "checkpointing", "chunk"),
    [(m, t, False, 7) for m in ("full", "embeddings", "lora") for t in (False, True)]
    + [("full", False, True, 7), ("full", True, False, 46)],
    ids=[f"{m}-{'tied' if t else 'untied'}" for m in ("full", "embeddings", "lora") for t in (False, True)]
    + ["full-untied-checkpointed", "full-tied-one-chunk"],
)
def test_the_chunked_loss_and_its_gradients_equal_the_plain_computation(
    monkeypatch, mode, tied, checkpointing, chunk
):
    import trainer.model

    # 7 tokens a chunk: the batch's 46 make 7 chunks; 46: one chunk, kept for the backward pass
    monkeypatch.setattr(trainer.model, "LOSS_CHUNK_VALUES", chunk * VOCAB)
    cfg = TrainConfig(mix="x", mode=mode)
    cfg.model.gradient_checkpointing = checkpointing  # the shipped recipe's setting: layers recomputed too
    model = prepare_model(tiny_llama(tied), cfg).train()
    assert getattr(causal_lm(model), "_cpt_chunked_loss", False)
    batch = packed_batch()
    plain, plain_grads = losses_and_grads(model, batch, chunked=False)
    chunked, chunked_grads = losses_and_grads(model, batch, chunked=True)

    assert torch.allclose(chunked, plain, atol=1e-5, rtol=0)
    assert plain_grads.keys() == chunked_grads.keys() and plain_grads
    head = [n for n in plain_grads if "lm_head" in n or "embed_tokens" in n]
    assert head  # the output layer's gradient, the one the chunks recompute, is among those compared
    for name, grad in plain_grads.items():
        assert torch.allclose(chunked_grads[name], grad, atol=1e-5, rtol=0), name
    # the evaluation path (no gradients) gives the same losses
    with torch.no_grad():
        evaluated, _ = token_losses(model, batch, "cpu")
    assert torch.allclose(evaluated * (batch["labels"][:, 1:] != -100), plain, atol=1e-5, rtol=0)


def test_no_chunk_holds_more_than_its_share_of_logits(monkeypatch):
    """The output layer sees at most a chunk of tokens at a time, in the forward and the backward pass."""
    import trainer.model

    monkeypatch.setattr(trainer.model, "LOSS_CHUNK_VALUES", 5 * VOCAB)
    model = prepare_model(tiny_llama(False), TrainConfig(mix="x")).train()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    losses, mask = token_losses(model, packed_batch(), "cpu")
    losses.sum().backward()
    assert max(seen) == 5 and sum(seen) == 2 * 2 * (
        LENGTH - 1
    )  # each chunk once forward, once again backward


def test_a_micro_batch_within_one_chunk_runs_the_head_once(monkeypatch):
    """Where one chunk holds every token, the logits are kept for the backward pass (the same peak: one
    chunk) rather than made again."""
    import trainer.model

    monkeypatch.setattr(trainer.model, "LOSS_CHUNK_VALUES", 2 * (LENGTH - 1) * VOCAB)
    model = prepare_model(tiny_llama(False), TrainConfig(mix="x")).train()
    seen = []
    model.lm_head.register_forward_hook(lambda m, args, out: seen.append(out.shape[0]))
    losses, mask = token_losses(model, packed_batch(), "cpu")
    losses.sum().backward()
    assert seen == [2 * (LENGTH - 1)]


def documents_of(batch: dict) -> list[tuple[int, int, int]]:
    """(row, start, length) of every document of a packed batch, padding included."""
    docs = []
    for row, positions in enumerate(batch["position_ids"].tolist()):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
        docs += [(row, a, b - a) for a, b in zip(starts, starts[1:], strict=False)]
    return docs


def exact_varlen_attention(calls: list):
    """A stand-in for transformers' flash-attention function: records the arguments it is handed and
    computes causal attention within each sequence `cu_seq_lens_q` bounds (over the batch's tokens
    flattened), exactly what flash-attention's varlen kernel computes."""

    def attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        calls.append(kwargs)
        batch, heads, length, dim = query.shape
        flat = [x.transpose(0, 1).reshape(x.shape[1], batch * length, dim) for x in (query, key, value)]
        q, k, v = flat[0], *(x.repeat_interleave(heads // x.shape[0], dim=0) for x in flat[1:])
        bounds = kwargs["cu_seq_lens_q"].tolist()
        out = torch.cat(
            [
                torch.nn.functional.scaled_dot_product_attention(
                    q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True, scale=scaling
                )
                for a, b in zip(bounds, bounds[1:], strict=False)
            ],
            dim=1,
        )
        return out.reshape(heads, batch, length, dim).permute(1, 2, 0, 3), None

    return attention


@pytest.mark.parametrize("kernel", ["flash_attention_2", "sdpa", "eager"])
def test_a_packed_document_has_its_losses_alone_in_a_micro_batch_of_two(monkeypatch, kernel):
    """Every document of a two-row packed micro-batch has the token losses it has alone, under each
    attention kernel; flash-attention (not installed on CPU: a stand-in computes exactly what its varlen
    kernel computes) is handed each document's bounds, where transformers would find none for a batch of
    two rows and let the documents attend to each other."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = prepare_model(tiny_llama(False), TrainConfig(mix="x")).eval()
    batch = packed_batch()
    calls: list = []
    if kernel == "flash_attention_2":
        monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, kernel, exact_varlen_attention(calls))
    model.config._attn_implementation = kernel
    with torch.no_grad():
        packed, _ = token_losses(model, batch, "cpu")
    model.config._attn_implementation = "sdpa"
    for row, start, n in documents_of(batch):
        if batch["labels"][row, start + 1 : start + n].eq(-100).all():
            continue  # padding
        ids, alone_labels = (
            batch["input_ids"][row, start : start + n],
            batch["labels"][row, start : start + n],
        )
        alone = {"input_ids": ids[None], "position_ids": torch.arange(n)[None], "labels": alone_labels[None]}
        with torch.no_grad():
            expected, _ = token_losses(model, alone, "cpu")
        assert torch.allclose(packed[row, start : start + n - 1], expected[0], atol=1e-5), (
            kernel,
            row,
            start,
        )
    if kernel == "flash_attention_2":
        bounds = [0] + [row * LENGTH + start + n for row, start, n in documents_of(batch)]
        assert calls and all(c["cu_seq_lens_q"].tolist() == bounds for c in calls)  # every layer
        assert all(c["max_length_q"] == 15 and isinstance(c["max_length_q"], int) for c in calls)


def test_a_row_that_starts_inside_a_document_is_a_sequence_of_its_own():
    from trainer.model import varlen_kwargs

    got = varlen_kwargs(torch.tensor([[0, 1, 2, 0, 1], [3, 4, 0, 1, 2]]))
    assert got["cu_seq_lens_q"].tolist() == [0, 3, 5, 7, 10] and got["max_length_q"] == 3


def test_each_part_gets_its_own_datasheet_peak():
    assert datasheet_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert datasheet_tflops("NVIDIA H100 PCIe") == 756.0
    assert datasheet_tflops("NVIDIA H100 NVL") == 835.5
    assert datasheet_tflops("NVIDIA H200") == 989.4 and datasheet_tflops("NVIDIA H200 NVL") == 835.5
    assert datasheet_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert datasheet_tflops("NVIDIA GeForce RTX 4090") is None  # not listed: MFU needs log.peak_tflops
