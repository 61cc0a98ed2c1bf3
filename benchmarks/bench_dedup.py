"""Quality and speed of `dedup`.

    python benchmarks/bench_dedup.py [--planted 200] [--json OUT] [--config YAML] [--set minhash.n_grams=3 ...]

1. Recall and precision of the MinHash level on near-duplicates planted in real text (English novels
   and SIGHAN Chinese news from shared/data) at 1%, 5%, 10% and 20% edits: English words, Chinese jieba
   words, Chinese characters and English characters (substituted, inserted or deleted). Recall: planted pairs found.
   Precision: predicted pairs that join a document and its copy, or two originals that already overlap
   (exact Jaccard of word 3-grams >= 0.3, found by comparing every pair: the PKU text holds a law and
   its amendment).
2. Documents/s of the MinHash path (datatrove's four stages, one task each; with the candidate check
   where the settings ask for it) against datasketch's MinHash + MinHashLSH on the same documents, the
   same shingles and the same bands, in one run; for FineWeb's defaults and for the high-recall preset,
   whose cost is reported against the defaults.
3. Peak memory of line dedup (ccNet) and of the MinHash candidate check at 1x, 4x and 16x the corpus,
   each size in a fresh process.
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


# the commonest characters: Chinese ones, and English letters (character edits in English are typos)
CHAR_FILLERS = {"zh": "的一是在不了有和人这中大为上个国我以要他", "en": "etaoinshrdlu"}


def edit(text: str, lang: str, rate: float, rng: random.Random, kind: str = "words") -> str:
    """Change, insert or delete about `rate` of the words (jieba words for Chinese), or with
    `kind="chars"` of the characters (common characters put in: templated pages differ like this)."""
    if kind == "chars":
        out = []
        for c in text:
            r = rng.random()
            if r < rate / 3:
                out.append(rng.choice(CHAR_FILLERS[lang]))
            elif r < 2 * rate / 3:
                out += [c, rng.choice(CHAR_FILLERS[lang])]
            elif r >= rate:
                out.append(c)
        return "".join(out)
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


PRESET = ROOT / "pipelines" / "configs" / "dedup_high_recall.yaml"


def run_dedup(clean: Path, out: Path, levels: list[str], config: str | None, overrides: list[str]) -> float:
    from pipelines.dedup import load_config, prepare

    cfg = load_config(config, overrides)
    run = prepare(clean, out, cfg, levels=levels, tasks=1, workers=1)
    start = time.perf_counter()
    for chain in run.chains:
        chain.executors[-1].run()  # runs the stages it depends on first
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


def quality(work: Path, lang: str, kind: str, planted: int, config: str | None, overrides: list[str]) -> list:
    texts = originals(lang)
    natural = natural_pairs(texts, lang)
    results = []
    for rate in (0.01, 0.05, 0.10, 0.20):
        rng = random.Random(int(rate * 100))
        docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
        chosen = rng.sample(range(len(texts)), planted)
        docs += [{"id": f"d{i}", "text": edit(texts[i], lang, rate, rng, kind)} for i in chosen]
        truth = {tuple(sorted((f"o{i}", f"d{i}"))) for i in chosen}
        clean, out = work / f"{lang}{kind}{rate}" / "clean", work / f"{lang}{kind}{rate}" / "out"
        write_shard(clean / lang / "000_00000.parquet", docs, lang)
        seconds = run_dedup(clean, out, ["minhash"], config, overrides)
        pred = predicted_pairs(out, lang)

        def correct(pair: tuple[str, str]) -> bool:  # a copy and its original, or originals that overlap
            a, b = sorted(int(x[1:]) for x in pair)
            return a == b or (a, b) in natural

        hit = len(pred & truth)
        right = sum(correct(p) for p in pred)
        results.append(
            {
                "lang": lang,
                "edits": kind,
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


def speed_against_datasketch(work: Path, planted: int, config: str | None, overrides: list[str]) -> dict:
    """cpt's MinHash path against datasketch on the same English documents, shingles (spaCy words through
    datatrove's simplification, word n-grams) and bands; where the settings check candidates
    (`verify_jaccard`), datasketch's candidates are checked the same way (exact Jaccard of shingles)."""
    import datasketch
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.text import TextNormConfig, simplify_text

    from pipelines.dedup import load_config

    m = load_config(config, overrides).minhash
    n, bands, rows = m.n_grams, m.num_buckets, m.hashes_per_bucket
    texts = originals("en")
    rng = random.Random(5)
    docs = [{"id": f"o{i}", "text": t} for i, t in enumerate(texts)]
    docs += [
        {"id": f"d{i}", "text": edit(texts[i], "en", 0.05, rng)}
        for i in rng.sample(range(len(texts)), planted)
    ]
    name = "preset" if config else "defaults"
    clean, out = work / f"speed_{name}" / "clean", work / f"speed_{name}" / "out"
    write_shard(clean / "en" / "000_00000.parquet", docs, "en")
    tokenizer = MinhashDedupSignature(str(work / "unused"), config=MinhashConfig()).word_tokenizer
    for d in docs:  # warm spaCy's vocabulary first: whichever side ran first would pay for it
        tokenizer.word_tokenize(simplify_text(d["text"], TextNormConfig()))
    from cpt.steps import heuristics

    heuristics._SPLITTERS.clear()  # cpt starts cold (spaCy loaded, no words cached) in each run
    cpt_seconds = run_dedup(clean, out, ["minhash"], config, overrides)

    start = time.perf_counter()
    lsh = datasketch.MinHashLSH(num_perm=bands * rows, params=(bands, rows))
    shingle_sets, pairs = {}, 0
    for d in docs:
        words = tokenizer.word_tokenize(simplify_text(d["text"], TextNormConfig()))
        shingles = {" ".join(words[i : i + n]).encode() for i in range(len(words) - n + 1)}
        mh = datasketch.MinHash(num_perm=bands * rows, seed=m.seed)
        mh.update_batch(list(shingles))
        for other in lsh.query(mh):
            if m.verify_jaccard is None:
                pairs += 1
                continue
            theirs = shingle_sets[other]
            inter = len(shingles & theirs)
            pairs += inter / (len(shingles) + len(theirs) - inter) >= m.verify_jaccard
        if m.verify_jaccard is not None:
            shingle_sets[d["id"]] = shingles
        lsh.insert(d["id"], mh)
    ds_seconds = time.perf_counter() - start
    return {
        "settings": str(Path(config).relative_to(ROOT)) if config else "defaults (dedup.yaml)",
        "documents": len(docs),
        "cpt_minhash_docs_per_s": round(len(docs) / cpt_seconds, 1),
        "datasketch_docs_per_s": round(len(docs) / ds_seconds, 1),
        "datasketch_pairs": int(pairs),
        "cpt_over_datasketch": round(ds_seconds / cpt_seconds, 2),
    }


MEMORY_PROBE = """
import json, sys, time
sys.path.insert(0, {root!r})
from pipelines.dedup import load_config, prepare

def hwm():  # VmHWM: this process's own peak (ru_maxrss would include the parent's size at fork)
    lines = open("/proc/self/status").read().splitlines()
    return int(next(x.split()[1] for x in lines if x.startswith("VmHWM:")))

run = prepare({clean!r}, {out!r}, load_config({config!r}, {overrides!r}), levels=[{level!r}], tasks=1, workers=1)
start, stages = time.perf_counter(), {{}}
for chain in run.chains:
    for executor in chain.executors:  # in order; each skips the stages before it, already done
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # starts the peak over: the peak of this stage alone
        executor.run()
        stages[type(executor.pipeline[-2 if len(executor.pipeline) > 2 else -1]).__name__] = hwm()
print(json.dumps({{"stages_kb": stages, "seconds": time.perf_counter() - start}}))
"""


def _probe(root: Path, clean: Path, out: Path, level: str, config, overrides) -> tuple[dict, float]:
    """Peak RSS (MiB) of each stage of one level, each stage's peak on its own, in a fresh process."""
    code = MEMORY_PROBE.format(
        root=str(root), clean=str(clean), out=str(out), level=level, config=config, overrides=overrides
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        sys.exit(f"memory probe failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stages = {k: round(v / 1024, 1) for k, v in result["stages_kb"].items()}
    return stages, round(result["seconds"], 1)


def line_memory(work: Path, base_docs: int, root: Path = ROOT) -> list[dict]:
    """Peak RSS of the lines level at 1x, 4x, 16x the corpus, each in a fresh process. Boilerplate lines
    come from a pool that grows with the corpus (each line about 10 times, so frequent): the frequent keys
    grow with the corpus as on the web."""
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(5000)]
    overrides = ["lines.spill_every=50000", "lines.shard_input_mb=1"]  # scaled down to show the bound
    results = []
    for factor in (1, 4, 16):
        clean, out = work / f"mem{factor}" / "clean", work / f"mem{factor}" / "out"
        n = base_docs * factor
        for part in range(factor):
            boiler = [f"boilerplate line {part}-{i} of the site" for i in range(base_docs // 2)]
            docs = []
            for i in range(base_docs):
                lines = [" ".join(rng.choices(vocab, k=8)) for _ in range(15)] + rng.sample(boiler, 5)
                docs.append({"id": f"p{part}-{i}", "text": "\n".join(lines)})
            write_shard(clean / "en" / f"000_{part:05d}.parquet", docs, "en")
        stages, seconds = _probe(root, clean, out, "lines", None, overrides)
        rss = {"counting_rss_mb": stages["LineHashCounter"], "filter_rss_mb": stages["LineDedupFilter"]}
        results.append(
            {
                "documents": n,
                "lines": n * 20,
                "frequent_lines": n // 2,
                "peak_rss_mb": rss,
                "seconds": seconds,
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def verify_memory(work: Path, base_docs: int, root: Path = ROOT) -> list[dict]:
    """Peak RSS of the high-recall MinHash path (candidate check included) at 1x, 4x, 16x the corpus:
    generated 150-word documents, half of them a 5%-edited copy of another, so candidates grow with it."""
    rng = random.Random(8)
    vocab = [f"w{i}" for i in range(20000)]
    results = []
    for factor in (1, 4, 16):
        clean, out = work / f"vmem{factor}" / "clean", work / f"vmem{factor}" / "out"
        for part in range(factor):
            docs = []
            for i in range(base_docs // 2):
                text = " ".join(rng.choices(vocab, k=150))
                docs += [
                    {"id": f"p{part}-{i}", "text": text},
                    {"id": f"q{part}-{i}", "text": edit(text, "en", 0.05, rng)},
                ]
            write_shard(clean / "en" / f"000_{part:05d}.parquet", docs, "en")
        stages, seconds = _probe(root, clean, out, "minhash", str(root / PRESET.relative_to(ROOT)), [])
        rss = {"signature_rss_mb": stages["MinhashSignature"], "check_rss_mb": stages["MinhashVerifyPairs"]}
        results.append(
            {
                "documents": base_docs * factor,
                "candidate_documents": base_docs * factor,
                "peak_rss_mb": rss,
                "seconds": seconds,
            }
        )
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def ratios(results: dict) -> list[dict]:
    """The figures `make bench` tabulates: cpt against the tool a user would otherwise run."""
    rows = []
    for s in results["speed"]:
        rows.append(
            {
                "figure": f"MinHash docs/s, {s['settings']}",
                "cpt": s["cpt_minhash_docs_per_s"],
                "reference": s["datasketch_docs_per_s"],
                "reference_name": "datasketch MinHash + MinHashLSH",
                "ratio": s["cpt_over_datasketch"],
                "goal": 1.0,
                "command": "python benchmarks/bench_dedup.py",
            }
        )
    defaults, preset = results["speed"]
    rows.append(
        {
            "figure": "MinHash docs/s, high-recall preset against defaults",
            "cpt": preset["cpt_minhash_docs_per_s"],
            "reference": defaults["cpt_minhash_docs_per_s"],
            "reference_name": "cpt, FineWeb defaults",
            "ratio": round(preset["cpt_minhash_docs_per_s"] / defaults["cpt_minhash_docs_per_s"], 2),
            "goal": None,
            "command": "python benchmarks/bench_dedup.py",
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planted", type=int, default=200, help="near-duplicate pairs planted per edit rate")
    parser.add_argument("--config", help="dedup settings for the quality figures (default: dedup.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dedup config override")
    parser.add_argument(
        "--memory-docs", type=int, default=20000, help="documents in the smallest line-dedup corpus (0: skip)"
    )
    parser.add_argument(
        "--verify-memory-docs",
        type=int,
        default=2000,
        help="documents in the smallest candidate-check corpus",
    )
    parser.add_argument("--skip-quality", action="store_true", help="speed and memory figures only")
    parser.add_argument(
        "--quality",
        default="en:words,zh:words,zh:chars,en:chars",
        help="LANG:EDITS pairs of the quality figures (EDITS: words or chars)",
    )
    parser.add_argument(
        "--root", type=Path, default=ROOT, help=argparse.SUPPRESS
    )  # another checkout's memory
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: real text not found; this benchmark plants near-duplicates in it")
    config = str(Path(args.config).resolve()) if args.config else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {
            "settings": args.config or "defaults (pipelines/configs/dedup.yaml)",
            "overrides": args.overrides,
        }
        if not args.skip_quality:
            results["quality"] = [
                row
                for lang, kind in (x.split(":") for x in args.quality.split(","))
                for row in quality(work, lang, kind, args.planted, config, args.overrides)
            ]
        results["speed"] = [
            speed_against_datasketch(work, args.planted, None, []),
            speed_against_datasketch(work, args.planted, str(PRESET), []),
        ]
        for s in results["speed"]:
            print(json.dumps(s), file=sys.stderr)
        if args.memory_docs:
            results["line_memory"] = line_memory(work, args.memory_docs, args.root)
        if args.verify_memory_docs:
            results["verify_memory"] = verify_memory(work, args.verify_memory_docs, args.root)
        results["ratios"] = ratios(results)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
