"""Tokens/second of `tokenize` per core against the Hugging Face tokenizer called directly, and the
`cpt-tok report` figures, on the real LLaMA tokenizer merged with Chinese-LLaMA's pieces.

    python benchmarks/bench_tokenize.py [--copies 20] [--json OUT] [--split-scales 1,4,16]

Both sides tokenize the same documents (English novels and Chinese news from shared/data, repeated
`--copies` times) with the same tokenizer.json and the same tokens out, one task / one process:
`run.py tokenize` as a user runs it (a fresh process that reads Parquet, tokenizes and writes shards
and tokens.json, timed from before its imports to its exit); the direct side calls `encode_batch` in
this process on texts already in memory and keeps nothing. Each side also runs on one copy, which
gives the rate past start-up (the added copies' tokens over the seconds they added) and `tokenize`'s
start-up (imports, datatrove's executors, the tokenizer's loading: the same at any corpus size). The
ratios are measured in one run.

`--split-by`: `run.py tokenize --split-by topic` (8 values, 4 shards, 4 tasks on one worker) on 1x, 4x
and 16x the corpus, each run in its own process: peak RSS (VmHWM) and seconds. `--root` points at
another checkout (an older cpt) to run the same measurement with its code.
"""

from __future__ import annotations

import argparse
import json
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


def corpus() -> dict[str, list[str]]:
    english = []
    for name in ("1342-0.txt", "3261.txt"):
        english += [
            p.strip() for p in (SHARED / "english-text" / name).read_text(encoding="utf-8").split("\n\n")
        ]
    chinese_lines = []
    for name in ("pku_test.utf8", "msr_test.utf8"):
        chinese_lines += (SHARED / "chinese-text" / name).read_text(encoding="utf-8").splitlines()
    chinese = ["\n".join(chinese_lines[i : i + 10]) for i in range(0, len(chinese_lines), 10)]
    return {"en": [t for t in english if t], "zh": [t for t in chinese if t.strip()]}


TOPICS = ["arts", "business", "health", "law", "news", "science", "sports", "travel"]

_PROBE = """
import runpy, sys, time
sys.argv = ["pipelines/run.py"] + {args!r}
start = time.perf_counter()
try:
    runpy.run_path("pipelines/run.py", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
seconds = time.perf_counter() - start
lines = open("/proc/self/status").read().splitlines()
print("PROBE", int(next(x.split()[1] for x in lines if x.startswith("VmHWM:"))), seconds)
"""


def probe(args: list[str], root: Path, what: str) -> tuple[int, float]:
    """(peak RSS KiB, seconds) of `pipelines/run.py ARGS` run in a fresh process from `root`, timed from
    before run.py's imports to its exit (the interpreter's own start excluded)."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=args)], capture_output=True, text=True, cwd=root
    )
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{what} failed:\n{proc.stderr[-3000:]}")
    _, kib, seconds = line.split()
    return int(kib), float(seconds)


def split_memory(
    work: Path, texts: dict[str, list[str]], tokenizer: Path, scales: list[int], root: Path
) -> list:
    """Peak RSS and seconds of `tokenize --split-by topic` at each corpus scale, one process a run."""
    base = [t for lang in ("en", "zh") for t in texts[lang]]
    meta_fields = CLEAN_SCHEMA.field("metadata").type
    results = []
    for scale in scales:
        docs = base * scale
        folder = work / f"split_in_{scale}"
        folder.mkdir()
        for part in range(4):
            rows = [
                {
                    "id": str(i),
                    "text": t,
                    "lang": "x",
                    "metadata": {**{f.name: None for f in meta_fields}, "topic": TOPICS[i % len(TOPICS)]},
                }
                for i, t in enumerate(docs)
                if i % 4 == part
            ]
            table = pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA)  # row groups of 1,000 as clean writes
            pq.write_table(table, folder / f"{part:03d}.parquet", row_group_size=1000)
        del docs
        args = ["tokenize", "--input", str(folder), "--tokenizer", str(tokenizer), "--output",
                str(work / f"split_out_{scale}"), "--split-by", "topic", "--tasks", "4", "--workers", "1",
                "--no-progress"]  # fmt: skip
        kib, seconds = probe(args, root, f"tokenize --split-by at {scale}x")
        documents = sum(
            json.loads((work / f"split_out_{scale}" / t / "tokens.json").read_text())["documents"]
            for t in TOPICS
        )
        results.append(
            {
                "scale": scale,
                "documents": documents,
                "peak_rss_mib": round(kib / 1024, 1),
                "seconds": round(seconds, 2),
            }
        )
    return results


def one_pass(docs: list[str], tokenizer_json: Path, tok, repeats: int = 3) -> dict:
    """tokenize's encoding stage alone (its chunks, worker thread and word cache, no Parquet and no files)
    against `encode_batch`, in this process, over the corpus once: every word is new the first time it
    is met, unlike the copies above, where all but the first meet a warm cache. Best of `repeats`, the
    cache emptied each time."""
    from datatrove.data import Document

    from cpt.tokens import document_tokenizer

    best, best_direct, tokens = float("inf"), float("inf"), 0
    for _ in range(repeats):
        step = document_tokenizer(str(tokenizer_json.parent / "unused"), str(tokenizer_json), "</s>")
        step.tokenizer  # noqa: B018 - loaded before the clock starts, as the direct side's is
        start = time.perf_counter()
        tokens = sum(
            len(flat) for _, (flat, _) in step._encoded_batches(Document(text=t, id="") for t in docs)
        )
        best = min(best, time.perf_counter() - start)
        start = time.perf_counter()
        direct = sum(
            len(e.ids) + 1 for i in range(0, len(docs), 10000) for e in tok.encode_batch(docs[i : i + 10000])
        )
        best_direct = min(best_direct, time.perf_counter() - start)
    if tokens != direct:
        sys.exit(f"one pass: tokenize's encoding gave {tokens} tokens, encode_batch {direct}")
    return {
        "documents": len(docs),
        "tokens": tokens,
        "word_cache": step.word_encoder is not None,
        "tokenize_tokens_per_s": round(tokens / best),
        "hf_direct_tokens_per_s": round(direct / best_direct),
        "ratio": round(best_direct / best, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=20, help="times the corpus is repeated")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument(
        "--split-scales", default="1,4,16", help="corpus scales of the --split-by memory runs ('' to skip)"
    )
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: real tokenizers and text not found")
    from tokenizers import Tokenizer

    from cpt.tok.merge import merge
    from cpt.tok.report import compare

    texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        merge(
            SHARED / "tokenizers" / "llama-32k.model",
            SHARED / "tokenizers" / "chinese-llama-20k.model",
            work / "merged",
        )
        one = [t for lang in ("en", "zh") for t in texts[lang]]
        runs = {}  # copies -> (cpt tokens, cpt seconds, direct tokens, direct seconds)
        tok = Tokenizer.from_file(str(work / "merged" / "tokenizer.json"))
        for copies in (1, args.copies):  # 1 copy: what both sides cost besides the corpus
            docs = one * copies
            rows = [{"id": str(i), "text": t, "lang": "x"} for i, t in enumerate(docs)]
            folder = work / f"in_{copies}" / "x"
            folder.mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), folder / "000_00000.parquet")
            del rows
            out = work / f"tokens_{copies}"
            args_ = ["tokenize", "--input", str(folder.parent), "--tokenizer", str(work / "merged"),
                     "--output", str(out), "--tasks", "1", "--workers", "1", "--no-progress"]  # fmt: skip
            _, cpt_seconds = probe(args_, ROOT, f"tokenize of {copies} copies")
            tokens = json.loads((out / "tokens.json").read_text())["tokens"]
            start = time.perf_counter()
            direct = sum(
                len(e.ids) + 1
                for i in range(0, len(docs), 10000)
                for e in tok.encode_batch(docs[i : i + 10000])
            )
            runs[copies] = (tokens, cpt_seconds, direct, time.perf_counter() - start)
        tokens, cpt_seconds, direct, direct_seconds = runs[args.copies]
        tokens_1, cpt_1, direct_1, direct_seconds_1 = runs[1]
        # past start-up: the tokens of the copies beyond the first over the seconds they added, each side
        steady = (tokens - tokens_1) / (cpt_seconds - cpt_1)
        direct_steady = (direct - direct_1) / (direct_seconds - direct_seconds_1)
        start_up = cpt_1 - (cpt_seconds - cpt_1) / (args.copies - 1)
        once = one_pass(one, work / "merged" / "tokenizer.json", tok)

        for lang in ("en", "zh"):
            (work / "text").mkdir(exist_ok=True)
            (work / "text" / f"{lang}.txt").write_text(
                "\n".join(t.replace("\n", " ") for t in texts[lang]), encoding="utf-8"
            )
        report = compare([SHARED / "tokenizers" / "llama-32k.model", work / "merged"], work / "text")
        report_rows = [
            {
                "tokenizer": Path(r.tokenizer).name,
                "lang": r.lang,
                "tokens": r.tokens,
                "tokens_per_char": round(r.tokens_per_char, 3),
                "bytes_per_token": round(r.bytes_per_token, 2),
            }
            for r in report
        ]
        scales = [int(x) for x in args.split_scales.split(",") if x.strip()]
        split = split_memory(work, texts, work / "merged", scales, args.root.resolve()) if scales else []
    results = {
        "documents": len(one) * args.copies,
        "tokens": tokens,
        "direct_tokens_incl_eos": direct,
        "tokenize_seconds": round(cpt_seconds, 2),
        "tokenize_start_up_seconds": round(start_up, 2),
        "tokenize_tokens_per_s": round(tokens / cpt_seconds),
        "hf_direct_tokens_per_s": round(direct / direct_seconds),
        "tokenize_over_direct": round((tokens / cpt_seconds) / (direct / direct_seconds), 2),
        "tokenize_past_start_up_tokens_per_s": round(steady),
        "hf_direct_past_start_up_tokens_per_s": round(direct_steady),
        "tokenize_over_direct_past_start_up": round(steady / direct_steady, 2),
        "one_pass": once,
        "report": report_rows,
        "split_by_memory": split,
    }
    results["ratios"] = [
        {
            "figure": "tokenize tokens/s past start-up",
            "cpt": results["tokenize_past_start_up_tokens_per_s"],
            "reference": results["hf_direct_past_start_up_tokens_per_s"],
            "reference_name": "HF tokenizers encode_batch, same texts",
            "ratio": results["tokenize_over_direct_past_start_up"],
            "goal": 1.0,
            "command": "python benchmarks/bench_tokenize.py",
        },
        {
            "figure": "tokenize's encoding alone, one pass over the corpus (no repeats), cold word cache",
            "cpt": once["tokenize_tokens_per_s"],
            "reference": once["hf_direct_tokens_per_s"],
            "reference_name": "HF tokenizers encode_batch, same texts",
            "ratio": once["ratio"],
            "goal": None,
            "command": "python benchmarks/bench_tokenize.py",
        },
        {
            "figure": f"tokenize tokens/s, whole command ({results['tokenize_start_up_seconds']} s start-up)",
            "cpt": results["tokenize_tokens_per_s"],
            "reference": results["hf_direct_tokens_per_s"],
            "reference_name": "HF tokenizers encode_batch, same texts",
            "ratio": results["tokenize_over_direct"],
            "goal": None,
            "command": "python benchmarks/bench_tokenize.py",
        },
    ]
    if len(split) >= 2:
        first, last = split[0], split[-1]
        results["ratios"].append(
            {
                "figure": f"tokenize --split-by peak RSS MiB, {last['scale']}x corpus against {first['scale']}x",
                "cpt": last["peak_rss_mib"],
                "reference": first["peak_rss_mib"],
                "reference_name": f"cpt at {first['scale']}x",
                "ratio": round(last["peak_rss_mib"] / first["peak_rss_mib"], 2),
                "goal": None,
                "command": "python benchmarks/bench_tokenize.py",
            }
        )
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
