"""What `clean`'s heuristic filters keep of real, clean text, by language and shape, and why they drop
the rest: the check that the filters judge Chinese as Chinese.

Real prose is cut into "articles" of about --chars characters (consecutive lines of one file), each given
in two shapes: one line (as Wudao, THUCNews and most Chinese corpora hold an article) and one paragraph a
line (as web text comes). Every article is clean text, so every removal is a false positive. The
filters are the ones `clean` builds from its config (pipelines/configs/clean.yaml, or --config and --set),
run in-process on documents already labelled with their language (language ID is not what is measured).

    python benchmarks/bench_heuristics.py                       # the shipped texts
    python benchmarks/bench_heuristics.py --text zh=PATH ...    # more files (one paragraph a line)
    python benchmarks/bench_heuristics.py --set heuristics.c4_quality.zh.max_word_length=1000

Prints, per (language, file, shape), articles in, kept, and the removals by filter and reason.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIPPED = [
    ("zh", ROOT / "tests/data/chinese-text/debian-handbook-zh-cn.txt"),
    ("en", ROOT / "tests/data/english-text/1342-0.txt"),
    ("en", ROOT / "tests/data/english-text/3261.txt"),
]


def paragraphs(path: Path) -> list[str]:
    """The paragraphs of `path`: its lines, or its blank-line-separated blocks where lines are wrapped
    (Project Gutenberg's files: a block of lines of at most ~75 characters is one paragraph)."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if sum(not line.strip() for line in lines) > len(lines) / 10:  # blocks
        blocks, current = [], []
        for line in [*lines, ""]:
            if line.strip():
                current.append(line.strip())
            elif current:
                blocks.append(" ".join(current))
                current = []
        return blocks
    return [" ".join(line.split()) for line in lines if line.strip()]


# an article ends with a sentence: a paragraph ending in one of these (some corpora hold a clause a line)
SENTENCE_END = tuple("。！？!?.…」』”’）)\"'")


def articles(path: Path, chars: int, limit: int) -> list[list[str]]:
    """Consecutive paragraphs of `path`, grouped until a group holds `chars` characters and ends with a
    sentence."""
    groups, current, size = [], [], 0
    for line in paragraphs(path):
        current.append(line)
        size += len(line)
        if size >= chars and line.endswith(SENTENCE_END):
            groups.append(current)
            current, size = [], 0
            if len(groups) == limit:
                break
    return groups


def measure(filters, lang: str, texts: list[str]) -> tuple[int, Counter]:
    from datatrove.data import Document

    kept, removed = 0, Counter()
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i), metadata={"lang": lang})
        for label, f in filters:
            result = f.filter(doc)
            ok, reason = (result, None) if isinstance(result, bool) else result
            if not ok:
                removed[f"{label}: {reason}"] += 1
                break
        else:
            kept += 1
    return kept, removed


def main(argv: list[str] | None = None) -> int:
    from pipelines.clean import heuristic_filters, load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--text", action="append", default=[], metavar="LANG=PATH",
                   help="a file of clean prose, one paragraph a line (repeatable); default: the shipped texts")  # fmt: skip
    p.add_argument("--chars", type=int, default=1500, help="characters an article holds at least (1500)")
    p.add_argument("--limit", type=int, default=300, help="articles a file at most (300)")
    p.add_argument("--config", help="a clean config (default: pipelines/configs/clean.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    filters = [
        (label.removeprefix("heuristics."), f)
        for label, f in heuristic_filters(load_config(args.config, args.overrides))
    ]
    texts = [(t.split("=", 1)[0], Path(t.split("=", 1)[1])) for t in args.text] or SHIPPED
    print(f"{'lang':<5} {'file':<28} {'shape':<11} {'in':>5} {'kept':>5} {'kept %':>7}  removed by")
    for lang, path in texts:
        groups = articles(path, args.chars, args.limit)
        for shape, sep in (("one line", "" if lang in ("zh", "ja") else " "), ("paragraphs", "\n")):
            kept, removed = measure(filters, lang, [sep.join(g) for g in groups])
            why = ", ".join(f"{k} {v}" for k, v in removed.most_common()) or "-"
            share = 100 * kept / max(len(groups), 1)
            print(
                f"{lang:<5} {path.name[:28]:<28} {shape:<11} {len(groups):>5} {kept:>5} {share:>6.1f}%  {why}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
