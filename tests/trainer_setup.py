"""A small trainer set-up shared by the trainer and Slurm tests: a tokenizer, a tiny Llama, token shards
(zh new, en old, held-out of each), a stage manifest and a trainer config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import REPO
from cpt.demo import sample_warc
from cpt.manifest import write_stage_manifest
from cpt.mix.plan import plan
from cpt.mix.stage import Replay, Source, Stage
from cpt.tokens import write_manifest

SEQ_LEN = 64


def _token_folder(folder: Path, texts: list[str], sp, tokenizer_dir: Path) -> Path:
    folder.mkdir(parents=True)
    docs = [sp.encode(t) + [sp.eos_id()] for t in texts]
    np.concatenate(docs).astype(np.uint16).tofile(folder / "00000_unshuffled.ds")
    np.cumsum([len(d) for d in docs]).astype(np.uint64).tofile(folder / "00000_unshuffled.ds.index")
    write_manifest(folder, folder.name, tokenizer_dir, 2)
    return folder


def build_small_setup(root: Path, tied: bool = False) -> dict:
    """A tokenizer, a tiny Llama (`tied`: its head is its input embedding), token shards (zh new, en old,
    held-out of each) and a stage manifest."""
    import sentencepiece as spm

    from cpt.demo.tiny_model import make_tiny_llama
    from cpt.tok.merge import merge
    from cpt.tok.train import train

    texts = {lang: [r["text"] for r in sample_warc.sample_articles(1, 60, lang)] for lang in ("en", "zh")}
    (root / "text").mkdir()
    for lang, docs in texts.items():
        (root / "text" / f"{lang}.txt").write_text("\n".join(docs), encoding="utf-8")
    train(root / "text", root / "sp", 2000, options={"hard_vocab_limit": "false"})
    merge(root / "sp", root / "sp", root / "tok")
    sp = spm.SentencePieceProcessor(model_file=str(root / "tok" / "tokenizer.model"))
    shards = {
        "zh_web": _token_folder(root / "tokens" / "zh_web", texts["zh"][:50], sp, root / "tok"),
        "en_web": _token_folder(root / "tokens" / "en_web", texts["en"][:50], sp, root / "tok"),
        "heldout_zh": _token_folder(root / "tokens" / "heldout_zh", texts["zh"][50:], sp, root / "tok"),
        "heldout_en": _token_folder(root / "tokens" / "heldout_en", texts["en"][50:], sp, root / "tok"),
    }
    stage = Stage(
        name="t",
        seq_len=SEQ_LEN,
        tokens=SEQ_LEN * 4 * 16,  # 16 steps of 2 ranks x 2 sequences
        seed=5,
        sources=[Source(name="zh_web", path=str(shards["zh_web"]), weight=1.0)],
        replay=Replay(share=0.25, sources=[Source(name="en_web", path=str(shards["en_web"]))]),
    )
    write_stage_manifest(plan(stage), root / "mix")
    model = make_tiny_llama(root / "tok", root / "model", hidden=32, layers=2, heads=4, tied=tied)
    config = root / "train.yaml"
    config.write_text(
        f"""
model: {{path: {model}}}
data: {{micro_batch_size: 2, gradient_accumulation: 1, workers: 1}}
optim: {{lr: 3.0e-3}}
schedule: {{kind: cosine, warmup_ratio: 0.1, min_lr: 3.0e-4}}
deepspeed: {{zero_stage: 2, bf16: false}}
eval:
  every: 8
  batch_size: 2
  sets:
    - {{name: en_old, path: {shards["heldout_en"]}, sequences: 4}}
    - {{name: zh_new, path: {shards["heldout_zh"]}, sequences: 4}}
checkpoint: {{every: 4, keep: 2}}
log: {{every: 1}}
"""
    )
    return {"root": root, "manifest": root / "mix" / "manifest.json", "model": model, "config": config}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train_cmd(setup, output: Path, *extra: str, ranks: int = 2) -> list[str]:
    launcher = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks)]
    launcher += ["--master_port", str(free_port())]
    return [*launcher, "trainer/main.py", "--mix", str(setup["manifest"]), "--config", str(setup["config"]),
            "--output", str(output), *extra]  # fmt: skip


def run_train(setup, output: Path, *extra: str, ranks: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        train_cmd(setup, output, *extra, ranks=ranks),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def packed_and_alone_losses(model, lengths: list[int], seed: int = 0):
    """Token losses of random documents of these lengths packed in one sequence (position_ids restarting
    at each), each document's losses alone, and the pack's losses without the restarts (no masking)."""
    import torch

    from trainer.model import token_losses

    rng = np.random.default_rng(seed)
    docs = [rng.integers(3, 500, n) for n in lengths]
    packed = np.concatenate(docs)
    positions = np.concatenate([np.arange(len(d)) for d in docs])
    labels = packed.copy()
    labels[positions == 0] = -100

    def batch(ids, pos, lab):
        arrays = {"input_ids": ids, "position_ids": pos, "labels": lab}
        return {k: torch.from_numpy(np.asarray(v)[None]) for k, v in arrays.items()}

    with torch.no_grad():
        inside, _ = token_losses(model, batch(packed, positions, labels), "cpu")
        alone = []
        for d in docs:
            alone_labels = d.copy()
            alone_labels[0] = -100
            alone.append(token_losses(model, batch(d, np.arange(len(d)), alone_labels), "cpu")[0][0])
        plain, _ = token_losses(model, batch(packed, np.arange(len(packed)), labels), "cpu")
    return inside[0], alone, plain[0]
