"""Tokens/second of `tokenize` per core against the Hugging Face tokenizer called directly, and the
`cpt-tok report` figures, on the real LLaMA tokenizer merged with Chinese-LLaMA's pieces.

    python benchmarks/bench_tokenize.py [--copies 20] [--json OUT]

Both sides tokenize the same documents (English novels and Chinese news from shared/data, repeated
`--copies` times) with the same tokenizer.json, one task / one process: `tokenize` reads Parquet,
tokenizes in datatrove batches and writes shards; the direct side calls `encode_batch` and keeps
nothing. The ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=20, help="times the corpus is repeated")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED}: real tokenizers and text not found")
    from tokenizers import Tokenizer

    from cpt.tok.merge import merge
    from cpt.tok.report import compare
    from pipelines.tokenization import prepare

    texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        merge(
            SHARED / "tokenizers" / "llama-32k.model",
            SHARED / "tokenizers" / "chinese-llama-20k.model",
            work / "merged",
        )
        docs = [t for _ in range(args.copies) for lang in ("en", "zh") for t in texts[lang]]
        rows = [{"id": str(i), "text": t, "lang": "x"} for i, t in enumerate(docs)]
        (work / "in" / "x").mkdir(parents=True)
        pq.write_table(
            pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), work / "in" / "x" / "000_00000.parquet"
        )

        run = prepare(work / "in", work / "merged", work / "tokens", tasks=1, workers=1, progress=False)
        start = time.perf_counter()
        run.executors[-1].run()
        cpt_seconds = time.perf_counter() - start
        tokens = json.loads((work / "tokens" / "tokens.json").read_text())["tokens"]

        tok = Tokenizer.from_file(str(work / "merged" / "tokenizer.json"))
        start = time.perf_counter()
        direct = sum(
            len(e.ids) + 1 for i in range(0, len(docs), 10000) for e in tok.encode_batch(docs[i : i + 10000])
        )
        direct_seconds = time.perf_counter() - start

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
    results = {
        "documents": len(docs),
        "tokens": tokens,
        "direct_tokens_incl_eos": direct,
        "tokenize_tokens_per_s": round(tokens / cpt_seconds),
        "hf_direct_tokens_per_s": round(direct / direct_seconds),
        "tokenize_over_direct": round((tokens / cpt_seconds) / (direct / direct_seconds), 2),
        "report": report_rows,
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
