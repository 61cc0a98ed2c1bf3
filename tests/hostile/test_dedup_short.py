"""`dedup` on documents too short for MinHash's shingles (fewer words than `n_grams`): datatrove gives
them no signature, so their exact copies were all kept. Each run here is the real command over a small
clean-like output; the copies must be removed, counted and named in the removed table."""

from __future__ import annotations

import json
import re

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import chinese_paragraphs, data_path, run_cli


def _paragraphs(n: int) -> list[str]:
    """Distinct real English paragraphs (Pride and Prejudice) and Chinese paragraphs (the Debian handbook)."""
    text = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    body = text[text.index("Chapter 1") : text.index("*** END OF")]
    english = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if len(p.split()) >= 60]
    lines = chinese_paragraphs()
    chinese = ["".join(line.split()) for line in lines if len(line) >= 80]
    return english[:n], chinese[:n]


def _shard(path, docs: list[tuple[str, str, str]]) -> None:
    """A shard as `clean` writes it, of (id, lang, text)."""
    from cpt.shards import CLEAN_SCHEMA

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"id": i, "text": t, "url": f"https://example.org/{i}", "lang": lang, "lang_score": 0.9,
         "source": "test", "metadata": None}
        for i, lang, t in docs
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), path)


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Two English shards and one Chinese: distinct long documents, short ones repeated exactly (within
    and across shards), and short ones that only look alike (other case, punctuation or number)."""
    root = tmp_path_factory.mktemp("clean")
    english, chinese = _paragraphs(6)
    longs = [(f"long{n}", "en", text) for n, text in enumerate(english)]
    _shard(root / "en" / "000_00000.parquet", [
        *longs[:3],
        ("more-a", "en", "Read more here"), ("more-b", "en", "Read more here"),  # 3 words: no 5-gram
        ("thanks-a", "en", "Thank you!"),
        ("page-1", "en", "Page 1 of 3"),  # same words as page-2 once MinHash folds digits: not a copy
        ("single", "en", "Subscribe"),
    ])  # fmt: skip
    _shard(root / "en" / "000_00001.parquet", [
        *longs[3:],
        ("more-c", "en", "Read  more here\n"),  # the same text, whitespace aside
        ("thanks-b", "en", "Thank you!"),  # a copy in another shard
        ("more-cased", "en", "read more, here"),  # other case and punctuation: kept
        ("page-2", "en", "Page 2 of 3"),
    ])  # fmt: skip
    _shard(root / "zh" / "000_00000.parquet", [
        ("zh-a", "zh", "谢谢你"), ("zh-b", "zh", "谢谢你"), ("zh-c", "zh", "不客气"),
        *[(f"zh-long{n}", "zh", text) for n, text in enumerate(chinese[:3])],
    ])  # fmt: skip
    return root


REMOVED = {"more-b": "more-a", "more-c": "more-a", "thanks-b": "thanks-a", "zh-b": "zh-a"}


@pytest.mark.parametrize(
    "description, options",
    [
        ("all levels, datatrove's bands", []),
        (
            "minhash only, with the candidate check",
            ["--levels", "minhash", "--set", "minhash.verify_jaccard=0.9"],
        ),
    ],
)
@pytest.mark.slow
def test_short_exact_duplicates_are_removed_counted_and_named(clean, tmp_path, description, options):
    out = tmp_path / "dedup"
    proc = run_cli("dedup", "--input", str(clean), "--output", str(out), "--no-progress", *options)
    assert "Traceback" not in proc.stderr

    funnel = json.loads((out / "report" / "funnel.json").read_text())
    for step in funnel["steps"]:
        assert step["docs_in"] == step["kept"] + sum(step["removed"].values()), step
    minhash = next(s for s in funnel["steps"] if s["step"] == "minhash")
    assert minhash["removed"] == {"near_duplicate": len(REMOVED)}, description

    kept = pl.read_parquet(out / "*" / "*.parquet")
    assert not set(REMOVED) & set(kept["id"])
    for id in ("more-a", "thanks-a", "zh-a", "zh-c", "more-cased", "page-1", "page-2", "single"):
        assert id in kept["id"], (description, id)
    assert sum(kept["id"].str.starts_with("long")) == 6 and sum(kept["id"].str.starts_with("zh-long")) == 3

    # each removed row names the cluster its kept copy carries in metadata.minhash_cluster_id
    removed = pl.read_parquet(out / "dedup" / "removed" / "*" / "*.parquet")
    assert sorted(removed["id"]) == sorted(REMOVED) and set(removed["level"]) == {"minhash"}
    cluster = {i: m["minhash_cluster_id"] for i, m in zip(kept["id"], kept["metadata"], strict=True)}
    for row in removed.iter_rows(named=True):
        assert row["duplicate_of"] == f"minhash_cluster:{cluster[REMOVED[row['id']]]}", row
        assert cluster[REMOVED[row["id"]]] >= 0
