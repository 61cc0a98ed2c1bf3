"""Documents/second of `score` per core: the KL filter, one classifier, and KL + three classifiers.

    python benchmarks/bench_score.py [--docs 2000] [--json OUT]

Input: generated articles (`cpt.demo.sample_warc.sample_articles`, half English, half Chinese) written as one
clean-format Parquet shard. The classifiers (quality, math, topic) are trained first on generated data
as `make demo` trains them. Each configuration runs `run.py score` as one task in one process (one core);
documents/s = documents over the whole run's wall time, start-up included (jieba's dictionary and the
fastText models load once per task). All configurations run in one invocation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpt.demo import sample_warc  # noqa: E402
from cpt.demo.sample_warc import write_sample_rows  # noqa: E402
from cpt.steps.classify import train_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    from pipelines.score import load_config, prepare

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        root = Path(tmp)
        docs = [r for lang in ("en", "zh") for r in sample_warc.sample_articles(3, args.docs // 2, lang)]
        write_sample_rows(root / "input" / "a.parquet", docs)
        t = root / "train"
        write_sample_rows(
            t / "good.parquet",
            [r for lang in ("en", "zh") for r in sample_warc.sample_articles(4, 150, lang)],
        )
        write_sample_rows(t / "bad.parquet", sample_warc.sample_low_quality(4, 300))
        write_sample_rows(t / "math.parquet", sample_warc.sample_math(4, 300))
        write_sample_rows(
            t / "topics.parquet",
            [r for lang in ("en", "zh") for r in sample_warc.sample_topic_articles(4, 200, lang)],
        )
        models = root / "models"
        train_classifier(models / "quality.bin", [str(t / "good.parquet")], [str(t / "bad.parquet")])
        train_classifier(models / "math.bin", [str(t / "math.parquet")], [str(t / "good.parquet")])
        train_classifier(
            models / "topic.bin", labeled=[str(t / "topics.parquet")], label_column="metadata.topic"
        )
        configs = {
            "KL filter only": ([], True),
            "quality classifier only": (["quality"], False),
            "KL + quality + math + topic": (["quality", "math", "topic"], True),
        }
        for i, (label, (names, kl)) in enumerate(configs.items()):
            cfg = load_config(overrides=[f"models={models}", f"kl.enabled={str(kl).lower()}"])
            run = prepare(root / "input", root / f"out{i}", cfg, names, tasks=1, workers=1, progress=False)
            start = time.perf_counter()
            run.executor.run()
            elapsed = time.perf_counter() - start
            results.append(
                {"config": label, "docs": len(docs), "seconds": elapsed, "docs_per_s": len(docs) / elapsed}
            )
            print(
                f"{label:<30} {len(docs) / elapsed:8.1f} docs/s  ({len(docs)} docs in {elapsed:.1f} s, one core)",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
