"""The model: a local Hugging Face causal LM, its attention kept within documents, and what trains.

Documents packed into one sequence are kept apart by `position_ids` that restart at each document:
transformers builds the block-diagonal mask from them (sdpa, eager, flex), but only with no
`attention_mask` and no cache; flash-attention is handed each document's bounds by the trainer
(`varlen_kwargs`), because transformers infers them only for a batch of one row. `use_cache` defaults to
true even in training, and then documents silently attend to each other, so it is switched off here.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from cpt.config import ConfigError
from cpt.io import refuse_custom_code
from trainer.config import LoraConfig, RopeConfig, TrainConfig

log = logging.getLogger(__name__)

# bf16 dense peak TFLOP/s per device, for MFU (NVIDIA datasheets, half the "with sparsity" figure), the
# first entry whose keys are all in the device's name: the PCIe and NVL parts before the SXM part that
# shares their model number ("NVIDIA H100 PCIe" is not an "NVIDIA H100 80GB HBM3")
PEAK_TFLOPS = (
    (("H100", "PCIe"), 756.0),
    (("H100", "NVL"), 835.5),
    (("H200", "NVL"), 835.5),
    (("H800", "PCIe"), 756.0),
    (("H100",), 989.4),
    (("H200",), 989.4),
    (("H800",), 989.4),
    (("A100",), 312.0),
    (("A800",), 312.0),
    (("L40S",), 362.0),
)

EMBEDDINGS = ("embed_tokens", "lm_head")


def pick_attention(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def apply_rope(config, rope: RopeConfig) -> None:
    """`model.rope` into a transformers model config (before the model is built: its rotary embedding
    reads the config once), checked by transformers' own validation; a ConfigError names the key."""
    if not rope.given():
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    if rope.scaling is not None:  # the scaling replaces the model's, its theta stays unless given
        params = {k: v for k, v in params.items() if k == "rope_theta"} | dict(rope.scaling)
    if rope.theta is not None:
        params["rope_theta"] = float(rope.theta)
    config.rope_parameters = params
    if rope.max_position_embeddings is not None:
        config.max_position_embeddings = rope.max_position_embeddings
    try:
        config.validate_rope()
    except (KeyError, ValueError, TypeError) as e:
        raise ConfigError("model.rope", [str(e).strip("\"'")]) from None


def model_config(path: str | Path, rope: RopeConfig):
    """A model folder's config with the run's RoPE applied."""
    from transformers import AutoConfig

    refuse_custom_code(path)
    config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    apply_rope(config, rope)
    return config


def load_model(cfg: TrainConfig, path: str | None = None):
    """The model set up for `cfg.mode`, in bf16 under `deepspeed.bf16`, else fp32. DeepSpeed casts the
    module to bf16 before it makes its fp32 masters from it, so an fp32 load only doubled every rank's
    host memory while it lasted (28 GB a rank for a 7B): the run trains the same either way."""
    from transformers import AutoModelForCausalLM

    path = path or cfg.model.path
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    attention = pick_attention(cfg.model.attention)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        config=model_config(path, cfg.model.rope),
        attn_implementation=attention,
        dtype=torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32,
        trust_remote_code=False,
    )
    return prepare_model(model, cfg), attention


# values of one chunk's logits: 2^26 (256 MiB in fp32) whatever the vocabulary, so 492 tokens a chunk at
# Llama 3.2 + 8k Chinese tokens (136,320 ids), 2,048 at 32k
LOSS_CHUNK_VALUES = 2**26


def chunked_token_losses(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy of `hidden` (B, T, H) through the output layer `head` against `targets`
    (B, T; -100 counts nothing), a chunk of tokens at a time: each chunk's logits (and their fp32 copy)
    are freed once its losses are taken, and made again in the backward pass (activation
    checkpointing), so no more than one chunk's logits are ever held, in either pass. The plain
    computation holds the whole batch's logits, their fp32 copy and their gradient: 2 x 2,048 x 136,320
    values are 2.2 GB in fp32."""
    from torch.utils.checkpoint import checkpoint

    flat, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    vocab = head.weight.shape[0] if hasattr(head, "weight") else head.out_features
    chunk = max(1, LOSS_CHUNK_VALUES // vocab)
    if flat.shape[0] <= chunk:
        # one chunk holds the whole micro-batch: its logits are kept for the backward pass, which follows
        # at once, instead of being made again; the peak is the same (one chunk), the head runs once
        return _chunk_losses(head, flat, flat_targets).view_as(targets)
    pieces = [
        checkpoint(_chunk_losses, head, flat[i : i + chunk], flat_targets[i : i + chunk], use_reentrant=False)
        if torch.is_grad_enabled()
        else _chunk_losses(head, flat[i : i + chunk], flat_targets[i : i + chunk])
        for i in range(0, flat.shape[0], chunk)
    ]
    return torch.cat(pieces).view_as(targets)


def _chunk_losses(head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return torch.nn.functional.cross_entropy(logits, targets, reduction="none", ignore_index=-100)


def causal_lm(model):
    """The transformers model inside `model` (a DeepSpeed engine, a peft wrapper or itself) that holds the
    output layer."""
    from transformers import PreTrainedModel

    inner = getattr(model, "module", model)
    return next(
        m for m in inner.modules() if isinstance(m, PreTrainedModel) and m.get_output_embeddings() is not None
    )


def _forward_with_losses(self, *args, targets: torch.Tensor | None = None, **kwargs):
    """The causal LM's own forward, or, given `targets` (B, T-1: the next tokens), the per-token losses
    (B, T-1) through `chunked_token_losses`, without the logits. It runs inside the model's forward (a
    DeepSpeed engine's forward), so ZeRO-3 gathers the output layer as for any forward."""
    if targets is None:
        return type(self).forward(self, *args, **kwargs)
    position_ids = kwargs.get("position_ids")
    varlen = {}
    if str(self.config._attn_implementation).startswith("flash_attention") and position_ids is not None:
        varlen = varlen_kwargs(position_ids)
    hidden = self.get_decoder()(
        input_ids=kwargs.get("input_ids", args[0] if args else None),
        position_ids=position_ids,
        attention_mask=kwargs.get("attention_mask"),
        use_cache=False,
        **varlen,
    ).last_hidden_state
    return chunked_token_losses(self.get_output_embeddings(), hidden[:, :-1], targets)


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """flash-attention's variable-length arguments for packed rows (B, L): every document (its
    positions restart at 0) and every row is a sequence of its own, over the B x L tokens flattened.
    transformers infers them from `position_ids` only for a batch of one row (`_is_packed_sequence`): with
    a micro-batch of several, every document attended to the ones before it in its row. The longest is
    a plain integer, read once a forward pass, where transformers' own inference reads it in every layer."""
    rows, length = position_ids.shape
    starts = position_ids.reshape(-1) == 0
    starts[::length] = True  # a row begins a sequence, whatever position its first token has
    ends = torch.tensor([rows * length], device=position_ids.device)
    bounds = torch.cat([starts.nonzero().flatten(), ends]).to(torch.int32)
    longest = int((bounds[1:] - bounds[:-1]).max())
    return {
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def with_chunked_loss(model):
    """`model`'s causal LM takes `targets=` and returns per-token losses (see `_forward_with_losses`). The
    instance's forward is replaced, not its class: the class name is what an export records as the
    architecture. Bound as a method, so a deep copy computes with the copy's own weights."""
    import types

    lm = causal_lm(model)
    lm.forward = types.MethodType(_forward_with_losses, lm)
    # the mark `token_losses` reads on the model it is handed (or a DeepSpeed engine's module), at
    # every micro-step: on the outer model too, so that it need not search a peft wrapper for it
    lm._cpt_chunked_loss = model._cpt_chunked_loss = True
    return model


def prepare_model(model, cfg: TrainConfig):
    """A loaded fp32 model set up for training in `cfg.mode`: no cache, gradient checkpointing as asked,
    only the embeddings trainable (embeddings), or wrapped with LoRA adapters (lora); its loss taken
    chunk by chunk (`with_chunked_loss`)."""
    model.config.use_cache = False  # with a cache, packed documents would attend to each other
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.mode == "embeddings":
        # Chinese-LLaMA's first stage: only the (new) embedding rows and the head learn
        for name, p in model.named_parameters():
            p.requires_grad = any(e in name for e in EMBEDDINGS)
    elif cfg.mode == "lora":
        model = with_lora(model, cfg.lora)
    return with_chunked_loss(model)


def with_lora(model, lora: LoraConfig):
    """The model wrapped with peft LoRA adapters as the config describes (training and export alike).

    On a base whose head is its input embedding, the tied matrix stays one matrix: peft's default keeps a
    trainable copy for each of `embed_tokens` and `lm_head`, which then drift apart and double the
    vocabulary's weights and optimizer state, and the merged export would no longer have the base's shape."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    tie = embeddings_tied(model) and any(
        name.split(".")[-1] in EMBEDDINGS for name in [*lora.modules_to_save, *lora.target_modules]
    )
    if tie:
        log.info("the head is tied to the input embedding: LoRA trains them as one matrix")
    return get_peft_model(
        model,
        PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=lora.modules_to_save,
            ensure_weight_tying=tie,
            task_type="CAUSAL_LM",
        ),
    )


def embeddings_tied(model) -> bool:
    """Whether the output head and the input embedding are one Parameter (`tie_word_embeddings`)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices (embeddings included), none on norms and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def flops_per_token(model_config, context: float) -> float:
    """Model FLOPs of one training token (forward + backward), as torchtitan and PaLM count them:
    6 x (parameters less the input embedding) + 12 x layers x hidden x context (attention).

    `context` is the sequence length for the convention papers report (every token attends over the whole
    sequence); with document masking a token attends only within its document, and the attention work is
    counted by passing the token-weighted mean document length, sum(n^2) / sum(n) over the pieces."""
    c = model_config
    hidden, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    heads, kv_heads = c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    inter = c.intermediate_size
    attn = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
    mlp = 3 * hidden * inter
    params = layers * (attn + mlp) + vocab * hidden  # blocks + lm_head (norms are negligible)
    return 6 * params + 12 * layers * hidden * context


def peak_flops(configured_tflops: float | None) -> float | None:
    """Peak FLOP/s of one device: the configured figure, else the GPU's datasheet bf16 peak, else None."""
    if configured_tflops:
        return configured_tflops * 1e12
    if torch.cuda.is_available():
        tflops = datasheet_tflops(torch.cuda.get_device_name())
        return tflops * 1e12 if tflops else None
    return None


def datasheet_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of a device by its name (`PEAK_TFLOPS`); None for one not listed."""
    return next((tflops for keys, tflops in PEAK_TFLOPS if all(k in device_name for k in keys)), None)


def trainable_summary(model) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{trainable:,} of {total:,} parameters train ({trainable / max(total, 1):.1%})"


class WeightEMA:
    """An exponential moving average of the trainable weights, in fp32, evaluated alongside the weights.

    Needs every rank to hold whole parameters (ZeRO 0-2; the config refuses it with ZeRO-3)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1 - self.decay)

    @contextmanager
    def applied(self, model):
        """The model with the EMA weights in place, restored afterwards."""
        saved = {}
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.shadow:
                    saved[name] = p.detach().clone()
                    p.copy_(self.shadow[name])
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in saved:
                        p.copy_(saved[name])


def token_losses(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy (B, L-1) of next-token prediction and the mask of tokens that count; a
    model the trainer prepared (`trainer.model.with_chunked_loss`) takes it a chunk of tokens at a time,
    without the whole batch's logits."""
    input_ids = batch["input_ids"].to(device)
    targets = batch["labels"].to(device)[:, 1:]
    if getattr(getattr(model, "module", model), "_cpt_chunked_loss", False):
        losses = model(input_ids=input_ids, position_ids=batch["position_ids"].to(device), targets=targets)
        return losses, targets != -100
    logits = model(input_ids=input_ids, position_ids=batch["position_ids"].to(device)).logits
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()  # (tokens, vocab): the fast layout
    losses = torch.nn.functional.cross_entropy(flat, targets.reshape(-1), reduction="none", ignore_index=-100)
    return losses.view_as(targets), targets != -100
