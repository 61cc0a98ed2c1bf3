"""A small trainer set-up shared by the trainer and Slurm tests: a tokenizer, a tiny Llama, token shards
(zh new, en old, held-out of each), a stage manifest and a trainer config."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def build_small_setup(root: Path) -> dict:
    """A tokenizer, a tiny Llama, token shards (zh new, en old, held-out of each) and a stage manifest."""
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
    model = make_tiny_llama(root / "tok", root / "model", hidden=32, layers=2, heads=4)
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
