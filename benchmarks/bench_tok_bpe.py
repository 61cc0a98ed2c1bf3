"""Byte-level BPE extension of the real Llama 3.2 tokenizer: what it saves, and what it costs to encode.

    python benchmarks/bench_tok_bpe.py [--new-tokens 20000] [--repeats 5] [--json out.json]

Trains `--new-tokens` tokens on the shared Chinese text (PKU + MSR) with `cpt-tok train --model-type
byte-bpe`, merges them into Llama 3.2 with `cpt-tok merge`, and reports:
- tokens merged / base on the Chinese text, on the traditional-Chinese text it did not see (AS + CityU)
  and on the English novels (1.000: ids identical), and `cpt-tok report`'s verdict on Chinese + English;
- encoding speed (tokenizers' `encode_batch`, the same texts, one run, best of `--repeats`, base and
  merged taking turns): merged / base, and the same new tokens given to the base as *added tokens*
  (the workaround this replaces) for contrast.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"


def _lines(*names: str) -> list[str]:
    return [
        line
        for name in names
        for line in (DATA / "chinese-text" / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]


def _paragraphs() -> list[str]:
    return [
        p
        for name in ("1342-0.txt", "3261.txt")
        for p in (DATA / "english-text" / name).read_text(encoding="utf-8").split("\n\n")
        if p.strip()
    ]


def _tokens(tok, texts: list[str]) -> int:
    return sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))


def _speed(toks: dict, texts: list[str], repeats: int) -> dict[str, float]:
    """Characters per second of each tokenizer, best of `repeats`, the tokenizers taking turns."""
    chars = sum(map(len, texts))
    best = {name: float("inf") for name in toks}
    for _ in range(repeats):
        for name, tok in toks.items():
            start = time.perf_counter()
            tok.encode_batch(texts, add_special_tokens=False)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: chars / s for name, s in best.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=20_000, help="tokens to add (default 20,000)")
    parser.add_argument("--repeats", type=int, default=5, help="encoding passes per tokenizer (best kept)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)

    from tokenizers import AddedToken, Tokenizer

    from cpt.tok import bpe
    from cpt.tok.report import compare, verdict
    from cpt.tok.train import train_byte_bpe

    base_dir = DATA / "tokenizers" / "llama-3.2"
    if not base_dir.is_dir():
        print(f"error: {base_dir}: the shared data is not there", file=sys.stderr)
        return 2
    simplified, traditional, english = _lines("pku_test.utf8", "msr_test.utf8"), _lines("as_test.utf8", "cityu_test.utf8"), _paragraphs()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "zh.utf8").write_text("\n".join(simplified) + "\n", encoding="utf-8")
        start = time.perf_counter()
        train_byte_bpe(tmp / "zh.utf8", tmp / "new", base_dir, args.new_tokens)
        trained_s = time.perf_counter() - start
        start = time.perf_counter()
        result = bpe.merge(base_dir, tmp / "new", tmp / "merged")
        merged_s = time.perf_counter() - start
        base, merged = (
            Tokenizer.from_file(str(base_dir / "tokenizer.json")),
            Tokenizer.from_file(str(tmp / "merged" / "tokenizer.json")),
        )
        counts = {
            name: (_tokens(base, texts), _tokens(merged, texts))
            for name, texts in (
                ("zh (trained on)", simplified),
                ("zh-Hant (unseen)", traditional),
                ("en", english),
            )
        }
        english_same = all(
            a.ids == b.ids
            for a, b in zip(
                base.encode_batch(english, add_special_tokens=False),
                merged.encode_batch(english, add_special_tokens=False),
                strict=True,
            )
        )
        (tmp / "corpus").mkdir()
        (tmp / "corpus" / "zh.utf8").write_text("\n".join(simplified), encoding="utf-8")
        (tmp / "corpus" / "en.txt").write_text("\n".join(english), encoding="utf-8")
        rows = compare([base_dir, tmp / "merged"], tmp / "corpus", max_docs=100_000)
        judged = verdict(rows)
        line = str(judged).replace(str(tmp / "merged"), "merged") if judged else ""

        # the workaround this replaces: the new tokens as added tokens of the base (the whole-character
        # ones: a token holding part of a character cannot be an added token)
        vocab = json.loads((tmp / "merged" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
        new = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i >= result.base_pieces]
        words = []
        for t in new:
            try:
                words.append(bpe.token_bytes(t).decode("utf-8"))
            except UnicodeDecodeError:
                continue
        added = Tokenizer.from_file(str(base_dir / "tokenizer.json"))
        added.add_tokens([AddedToken(w, normalized=False) for w in words])
        mixed = simplified + english
        speed = _speed({"base": base, "merged": merged, "added tokens": added}, mixed, args.repeats)

    figures = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
        "new_tokens": result.added,
        "train_s": round(trained_s, 1),
        "merge_s": round(merged_s, 1),
        "tokens": {k: {"base": a, "merged": b, "ratio": round(b / a, 3)} for k, (a, b) in counts.items()},
        "english_ids_identical": english_same,
        "verdict": line,
        "encode_chars_per_s": {k: round(v) for k, v in speed.items()},
        "encode_ratio_merged_to_base": round(speed["merged"] / speed["base"], 3),
        "encode_ratio_added_to_base": round(speed["added tokens"] / speed["base"], 3),
        "added_tokens_used": len(words),
    }
    print(
        f"Llama 3.2 + {result.added:,} byte-level BPE tokens (trained {trained_s:.1f} s, merged {merged_s:.1f} s)"
    )
    for name, (a, b) in counts.items():
        print(f"  {name:<18} base {a:>9,}  merged {b:>9,}  merged/base {b / a:.3f}")
    print(f"  English ids identical: {english_same}")
    print(f"  {line}")
    for name, v in speed.items():
        print(f"  encode_batch {name:<13} {v / 1e6:6.2f} M chars/s  ({v / speed['base']:.3f} of base)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
