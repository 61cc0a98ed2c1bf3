"""Quality and speed of `dedup`.

    python benchmarks/bench_dedup.py [--planted 200] [--json OUT] [--set minhash.n_grams=3 ...]

1. Recall and precision of the MinHash level on near-duplicates planted in real text (English novels
   and SIGHAN Chinese news from shared/data) at 1%, 5%, 10% and 20% of words changed, inserted or
   deleted. Recall: planted pairs found. Precision: predicted pairs that join a document and its copy,
   or two originals that already overlap (exact Jaccard of word 3-grams >= 0.3, found by comparing
   every pair: the PKU text holds a law and its amendment).
2. Documents/s of the MinHash path (datatrove's four stages, one task each) against datasketch's
   MinHash + MinHashLSH on the same documents and the same shingles, in one run.
3. Peak memory of line dedup (ccNet) as the corpus doubles, each size in a fresh process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from cpt.shards import CLEAN_SCHEMA  # noqa: E402

FILLERS = {
    "en": ["river", "window", "garden", "letter", "morning", "silver", "indeed", "quite"],
    "zh": ["河流", "窗户", "花园", "信件", "早晨", "银色", "确实", "非常"],
}


def write_shard(path: Path, docs: list[dict], lang: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": d["id"],
            "text": d["text"],
            "url": None,
            "lang": lang,
            "lang_score": 1.0,
            "source": "bench",
            "metadata": None,
        }
        for d in docs
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), path)


def gutenberg_body(text: str) -> str:
    """The book without Project Gutenberg's header and licence (both books carry the same licence)."""
    start = re.search(r"\*\*\* ?START OF [^\n]*\*\*\*", text)
    end = re.search(r"\*\*\* ?END OF [^\n]*\*\*\*", text)
    return text[start.end() if start else 0 : end.start() if end else len(text)]


def originals(lang: str) -> list[str]:
    if lang == "en":
        texts = []
        for name in ("1342-0.txt", "3261.txt"):
            body = gutenberg_body((SHARED / "english-text" / name).read_text(encoding="utf-8"))
            texts += [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
        return [t for t in texts if len(t.split()) >= 60]
    lines = (SHARED / "chinese-text" / "pku_test.utf8").read_text(encoding="utf-8").splitlines()
    lines += (SHARED / "chinese-text" / "msr_test.utf8").read_text(encoding="utf-8").splitlines()
    docs = ["".join(lines[i : i + 4]).replace(" ", "") for i in range(0, len(lines) - 4, 4)]
    return [d for d in docs if len(d) >= 150]


def edit(text: str, lang: str, rate: float, rng: random.Random) -> str:
    """Change, insert or delete about `rate` of the words (jieba words for Chinese)."""
    if lang == "zh":
        import jieba

        words, sep = jieba.lcut(text), ""
    else:
        words, sep = text.split(), " "
    out = []
    for w in words:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(FILLERS[lang]))
        elif r < 2 * rate / 3:
            out += [w, rng.choice(FILLERS[lang])]
        elif r >= rate:
            out.append(w)
    return sep.join(out)


def run_dedup(clean: Path, out: Path, levels: list[str], overrides: list[str]) -> float:
    from pipelines.dedup import load_config, prepare

    run = prepare(clean, out, load_config(None, overrides), levels=levels, tasks=1, workers=1, progress=False)
    start = time.perf_counter()
    for chain in run.chains:
        chain.executors[-1].run()
    return time.perf_counter() - start


def predicted_pairs(out: Path, lang: str) -> set[tuple[str, str]]:
    import polars as pl

    kept = pl.read_parquet(out / lang / "*.parquet").select(
        "id", pl.col("metadata").struct.field("minhash_cluster_id").alias("cluster")
    )
    removed_files = list((out / "dedup" / "removed" / lang).glob("*.parquet"))
    removed = (
        pl.read_parquet(removed_files).select(
            "id", pl.col("duplicate_of").str.split(":").list.get(1).cast(pl.Int64).alias("cluster")
        )
        if removed_files
        else pl.DataFrame({"id": [], "cluster": []}, schema={"id": pl.String, "cluster": pl.Int64})
    )
    members = pl.concat([kept, removed]).filter(pl.col("cluster") >= 0)
    pairs = set()
    for ids in members.group_by("cluster").agg("id")["id"]:
        pairs |= {tuple(sorted(p)) for p in itertools.combinations(ids, 2)}
    return pairs


def natural_pairs(texts: list[str], lang: str, min_jaccard: float = 0.3) -> set[tuple[int, int]]:
    """Pairs of originals that already overlap (exact Jaccard of word 3-grams): true duplicates too."""
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    from cpt.steps.heuristics import word_tokenizers

    tokenizer = word_tokenizers([lang])[lang]
    shingler = MinhashDedupSignature("unused", config=MinhashConfig(n_grams=3), language=tokenizer)
    sets = [set(shingler.get_shingles(t).ravel().tolist()) for t in texts]
    found = set()
    for i, j in itertools.combinations(range(len(sets)), 2):
        inter = len(sets[i] & sets[j])
        if inter and inter / len(sets[i] | sets[j]) >= min_jaccard:
            found.add((i, j))
    return found


def quality(work: Path, lang: str, planted: int, overrides: list[str]) -> list[dict]:
    texts = originals(lang)
    natural = natural_pairs(texts, lang)
    results = []
    for rate in (0.01, 0.05, 0.10, 0.20):
        rng = random.Random(int(rate * 100))
        docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
        chosen = rng.sample(range(len(texts)), planted)
        docs += [{"id": f"d{i}", "text": edit(texts[i], lang, rate, rng)} for i in chosen]
        truth = {tuple(sorted((f"o{i}", f"d{i}"))) for i in chosen}
        clean, out = work / f"{lang}{rate}" / "clean", work / f"{lang}{rate}" / "out"
        write_shard(clean / lang / "000_00000.parquet", docs, lang)
        seconds = run_dedup(clean, out, ["minhash"], overrides)
        pred = predicted_pairs(out, lang)

        def correct(pair: tuple[str, str]) -> bool:  # a copy and its original, or originals that overlap
            a, b = sorted(int(x[1:]) for x in pair)
            return a == b or (a, b) in natural

        hit = len(pred & truth)
        right = sum(correct(p) for p in pred)
        results.append(
            {
                "lang": lang,
                "edit_rate": rate,
                "documents": len(docs),
                "planted_pairs": len(truth),
                "natural_pairs": len(natural),
                "predicted_pairs": len(pred),
                "recall": round(hit / len(truth), 3),
                "precision": round(right / len(pred), 3) if pred else 1.0,
                "seconds": round(seconds, 1),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def speed_against_datasketch(work: Path, planted: int) -> dict:
    import datasketch
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.text import TextNormConfig, simplify_text

    texts = originals("en")
    rng = random.Random(5)
    docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
    docs += [
        {"id": f"d{i}", "text": edit(texts[i], "en", 0.05, rng)}
        for i in rng.sample(range(len(texts)), planted)
    ]
    clean, out = work / "speed" / "clean", work / "speed" / "out"
    write_shard(clean / "en" / "000_00000.parquet", docs, "en")
    tokenizer = MinhashDedupSignature(str(work / "unused"), config=MinhashConfig()).word_tokenizer
    for d in docs:  # warm spaCy's vocabulary first: whichever side ran first would pay for it
        tokenizer.word_tokenize(simplify_text(d["text"], TextNormConfig()))
    cpt_seconds = run_dedup(clean, out, ["minhash"], [])

    start = time.perf_counter()
    lsh = datasketch.MinHashLSH(num_perm=112, params=(14, 8))
    for d in docs:
        words = tokenizer.word_tokenize(simplify_text(d["text"], TextNormConfig()))
        m = datasketch.MinHash(num_perm=112, seed=1)
        m.update_batch([" ".join(words[i : i + 5]).encode() for i in range(len(words) - 4)])
        lsh.query(m)
        lsh.insert(d["id"], m)
    ds_seconds = time.perf_counter() - start
    return {
        "documents": len(docs),
        "cpt_minhash_docs_per_s": round(len(docs) / cpt_seconds, 1),
        "datasketch_docs_per_s": round(len(docs) / ds_seconds, 1),
        "cpt_over_datasketch": round(ds_seconds / cpt_seconds, 2),
    }


MEMORY_PROBE = """
import resource, sys, time
sys.path.insert(0, {root!r})
from pipelines.dedup import load_config, prepare
run = prepare({clean!r}, {out!r}, load_config(None, {overrides!r}), levels=["lines"], tasks=1, workers=1, progress=False)
start = time.perf_counter()
for chain in run.chains:
    chain.executors[-1].run()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter() - start)
"""


def line_memory(work: Path, base_docs: int) -> list[dict]:
    """Peak RSS of the lines level at 1x, 2x, 4x the corpus, each in a fresh process."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(5000)]
    boiler = [f"boilerplate line number {i} of the site" for i in range(50)]
    overrides = ["lines.spill_every=50000", "lines.shard_input_mb=1"]  # scaled down to show the bound
    results = []
    for factor in (1, 2, 4):
        clean, out = work / f"mem{factor}" / "clean", work / f"mem{factor}" / "out"
        n = base_docs * factor
        for part in range(factor):
            docs = []
            for i in range(base_docs):
                lines = [" ".join(rng.choices(vocab, k=8)) for _ in range(15)] + rng.sample(boiler, 5)
                docs.append({"id": f"p{part}-{i}", "text": "\n".join(lines)})
            write_shard(clean / "en" / f"000_{part:05d}.parquet", docs, "en")
        code = MEMORY_PROBE.format(root=str(ROOT), clean=str(clean), out=str(out), overrides=overrides)
        rss_kb, seconds = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()[-2:]
        results.append(
            {
                "documents": n,
                "lines": n * 20,
                "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                "seconds": round(float(seconds), 1),
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planted", type=int, default=200, help="near-duplicate pairs planted per edit rate")
    parser.add_argument(
        "--memory-docs", type=int, default=20000, help="documents in the smallest line-dedup corpus"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dedup config override")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: real text not found; this benchmark plants near-duplicates in it")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {
            "settings": args.overrides or "defaults (pipelines/configs/dedup.yaml)",
            "quality": quality(work, "en", args.planted, args.overrides)
            + quality(work, "zh", args.planted, args.overrides),
            "speed": speed_against_datasketch(work, args.planted),
            "line_memory": line_memory(work, args.memory_docs),
        }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
