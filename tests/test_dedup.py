"""`dedup`: URL keys, ccNet lines, MinHash against datasketch, and the pipeline end to end."""

from __future__ import annotations

import json
import random
import re

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import chinese_paragraphs, data_path, run_cli, run_cli_until
from cpt.shards import CLEAN_SCHEMA
from cpt.steps.dedup import normalize_line, normalize_url


def write_clean_shard(path, docs: list[dict]) -> None:
    """A shard as `clean` writes it: docs are dicts with id, text, url, lang."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": d["id"],
            "text": d["text"],
            "url": d.get("url"),
            "lang": d.get("lang", "en"),
            "lang_score": 0.9,
            "source": "test",
            "metadata": None,
        }
        for d in docs
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), path)


def english_paragraphs(n: int) -> list[str]:
    text = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    body = text[text.index("Chapter 1") : text.index("*** END OF")]
    paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    paras = [p for p in paras if len(p.split()) >= 80]
    assert len(paras) >= n
    return paras[:n]


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Change, insert or delete about `rate` of the words."""
    out = []
    for w in text.split():
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice(["river", "window", "garden", "letter", "morning", "silver"]))
        elif r < 2 * rate / 3:
            out.extend([w, rng.choice(["indeed", "quite", "very", "still"])])
        elif r < rate:
            continue
        else:
            out.append(w)
    return " ".join(out)


def test_normalize_url():
    assert (
        normalize_url("HTTPS://WWW.Example.com:443/a/b/?utm_source=x&b=2&a=1#top")
        == "example.com/a/b?a=1&b=2"
    )
    assert normalize_url("http://example.com/a/b") == normalize_url("https://example.com/a/b/")
    assert normalize_url("http://example.com:8080/a") == "example.com:8080/a"
    assert normalize_url("http://example.com/a?id=1") != normalize_url("http://example.com/a?id=2")


def test_normalize_line_folds_case_digits_and_punctuation():
    assert normalize_line("Copyright © 2024, Village Times!") == normalize_line(
        "copyright © 1999 village times"
    )
    assert normalize_line("版权所有 ２０２４。") == normalize_line("版权所有 1999")
    assert normalize_line("  ...  ") == ""


@pytest.mark.slow
def test_dedup_end_to_end_on_clean_output(tmp_path):
    rng = random.Random(0)
    paras = english_paragraphs(40)
    boiler = "Subscribe to our newsletter for weekly updates."
    docs = [
        {"id": f"d{i}", "text": f"{p}\n{boiler}", "url": f"https://site.com/p/{i}"}
        for i, p in enumerate(paras)
    ]
    docs.append({"id": "url-dup", "text": paras[0][:200], "url": "http://www.site.com/p/0/?utm_source=feed"})
    docs.append({"id": "near-dup", "text": edit_words(paras[1], 0.02, rng), "url": "https://mirror.com/x"})
    docs.append({"id": "only-boiler", "text": f"{boiler}\n{boiler.upper()}", "url": "https://site.com/empty"})
    zh = [
        {
            "id": f"z{i}",
            "text": "。".join(["今天的天气很好我们一起去公园散步看看花开了没有"] * 3) + f"{i}号文章结束。",
            "url": f"https://zh.com/{i}",
            "lang": "zh",
        }
        for i in range(3)
    ]
    write_clean_shard(tmp_path / "clean" / "en" / "000_00000.parquet", docs[:25])
    write_clean_shard(tmp_path / "clean" / "en" / "000_00001.parquet", docs[25:])
    write_clean_shard(tmp_path / "clean" / "zh" / "000_00000.parquet", zh)

    out = tmp_path / "dedup"
    proc = run_cli("dedup", "--input", str(tmp_path / "clean"), "--output", str(out))
    assert "near_duplicate" in proc.stdout
    # one bar a language, of its stages; not datatrove's bars of every task and step, nor its warnings
    bars = [line for line in proc.stderr.split("\n") if "stage/s" in line]  # \r redraws a bar's line
    assert [line.strip("\r").split(":")[0] for line in bars] == ["dedup en", "dedup zh"], proc.stderr
    assert "Document progress" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr
    funnel = json.loads((out / "report" / "funnel.json").read_text())
    steps = {s["step"]: s for s in funnel["steps"]}
    assert [s["step"] for s in funnel["steps"]] == ["read", "url", "minhash", "lines", "write"]
    for s in funnel["steps"]:
        assert s["docs_in"] == s["kept"] + sum(s["removed"].values())
    assert steps["read"]["docs_in"] == len(docs) + len(zh)
    assert steps["url"]["removed"] == {"url_duplicate": 1}
    assert steps["minhash"]["removed"] == {"near_duplicate": 3}  # near-dup + two of the three zh copies
    assert steps["lines"]["removed"] == {"lines_emptied": 1}

    kept = pl.read_parquet(out / "*" / "*.parquet")
    assert "url-dup" not in kept["id"] and "d0" in kept["id"]  # the longest text of the URL wins
    assert "near-dup" not in kept["id"] and "only-boiler" not in kept["id"]
    assert not kept["text"].str.contains(boiler).any()  # seen 41 times > 6: removed from every page
    assert (kept.filter(pl.col("lang") == "en")["metadata"].struct.field("lines_removed") == 1).all()

    removed = pl.read_parquet(out / "dedup" / "removed" / "*" / "*.parquet")
    why = dict(zip(removed["id"], removed["duplicate_of"], strict=True))
    assert why["url-dup"] == "url:site.com/p/0"
    cluster = int(why["near-dup"].split(":")[1])
    d1 = kept.filter(pl.col("id") == "d1")
    assert d1["metadata"].struct.field("minhash_cluster_id")[0] == cluster
    assert set(removed.filter(pl.col("lang") == "zh")["level"]) == {"minhash"}


def test_minhash_finds_the_same_pairs_as_datasketch(tmp_path):
    datasketch = pytest.importorskip("datasketch")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.text import TextNormConfig, simplify_text

    rng = random.Random(1)
    paras = english_paragraphs(120)
    docs = [{"id": f"o{i}", "text": p, "url": f"https://a.com/{i}"} for i, p in enumerate(paras)]
    planted = {}
    for i in range(0, 120, 3):
        dup = f"n{i}"
        docs.append({"id": dup, "text": edit_words(paras[i], 0.02, rng), "url": f"https://b.com/{i}"})
        planted[dup] = f"o{i}"
    write_clean_shard(tmp_path / "clean" / "en" / "000_00000.parquet", docs)
    out = tmp_path / "dedup"
    run_cli(
        "dedup",
        "--input",
        str(tmp_path / "clean"),
        "--output",
        str(out),
        "--levels",
        "minhash",
        "--no-progress",
    )
    removed = set(pl.read_parquet(out / "dedup" / "removed" / "en" / "*.parquet")["id"])

    # datasketch on the same shingles (datatrove's text simplification, word 5-grams), 14 x 8 bands
    sig = MinhashDedupSignature(str(tmp_path / "unused"), config=MinhashConfig())
    lsh = datasketch.MinHashLSH(num_perm=112, params=(14, 8))
    reference_pairs = set()
    for d in docs:
        words = sig.word_tokenizer.word_tokenize(simplify_text(d["text"], TextNormConfig()))
        m = datasketch.MinHash(num_perm=112, seed=1)
        m.update_batch([" ".join(words[i : i + 5]).encode() for i in range(len(words) - 4)])
        for other in lsh.query(m):
            reference_pairs.add(tuple(sorted((other, d["id"]))))
        lsh.insert(d["id"], m)
    reference_removed = {b if b.startswith("n") else a for a, b in reference_pairs}

    planted_pairs = set(planted)
    assert len(removed & planted_pairs) >= 0.9 * len(planted_pairs)
    assert len(reference_removed & planted_pairs) >= 0.9 * len(planted_pairs)
    # the two agree on all but a few borderline pairs, and neither removes an original
    assert len(removed ^ reference_removed) <= 0.1 * len(planted_pairs)
    assert not {r for r in removed if r.startswith("o")}


def _three_shard_corpus(root) -> None:
    rng = random.Random(2)
    paras = english_paragraphs(60)
    docs = [
        {"id": f"d{i}", "text": p + "\nShare this page with friends.", "url": f"https://s.com/{i}"}
        for i, p in enumerate(paras)
    ]
    docs += [
        {"id": f"n{i}", "text": edit_words(paras[i], 0.02, rng), "url": f"https://m.com/{i}"}
        for i in range(10)
    ]
    for k in range(3):
        write_clean_shard(root / "en" / f"000_0000{k}.parquet", docs[k::3])


@pytest.mark.slow
def test_dedup_resume_after_kill_matches_uninterrupted(tmp_path):
    clean = tmp_path / "clean"
    _three_shard_corpus(clean)
    args = ["dedup", "--input", str(clean), "--workers", "1", "--no-progress"]
    whole = tmp_path / "whole"
    run_cli(*args, "--output", str(whole))

    killed = tmp_path / "killed"
    marker = killed / "report" / "logs" / "en" / "minhash_1_signatures" / "completions"
    run_cli_until(marker, *args, "--output", str(killed))
    assert not (killed / "report" / "funnel.json").exists()

    run_cli(*args, "--output", str(killed))

    def rows(out):
        return sorted(pl.read_parquet(out / "en" / "*.parquet").to_dicts(), key=lambda r: r["id"])

    assert rows(killed) == rows(whole)
    assert json.loads((killed / "report" / "funnel.json").read_text()) == json.loads(
        (whole / "report" / "funnel.json").read_text()
    )
    assert not list(killed.rglob("*.parquet.tmp"))


def test_dedup_slurm_dry_run_and_shipped_config(tmp_path):
    from pipelines.dedup import load_config

    assert load_config().minhash.num_buckets == 14 and load_config().lines.max_count == 6
    clean = tmp_path / "clean"
    _three_shard_corpus(clean)
    proc = run_cli(
        "dedup",
        "--input",
        str(clean),
        "--output",
        str(tmp_path / "o"),
        "--executor",
        "slurm",
        "--dry-run",
        "--set",
        "slurm.partition=cpu",
    )
    assert (
        "url_1_signatures[3] -> url_2_duplicates[1] -> url_3_filter[3] -> minhash_1_signatures[3]"
        in proc.stdout
    )
    assert "minhash_2_buckets[14]" in proc.stdout and "lines_2_frequent[8]" in proc.stdout
    assert "#SBATCH --array=0-2" in proc.stdout and "#SBATCH --partition=cpu" in proc.stdout
    assert not (tmp_path / "o" / "report" / "settings.json").exists()


def test_high_recall_minhash_with_candidate_check_finds_ten_percent_edits(tmp_path):
    rng = random.Random(3)
    paras = english_paragraphs(80)
    docs = [{"id": f"o{i}", "text": p, "url": f"https://a.com/{i}"} for i, p in enumerate(paras)]
    docs += [
        {"id": f"n{i}", "text": edit_words(paras[i], 0.10, rng), "url": f"https://b.com/{i}"}
        for i in range(20)
    ]
    write_clean_shard(tmp_path / "clean" / "en" / "000_00000.parquet", docs)
    preset = [
        "minhash.n_grams=3",
        "minhash.num_buckets=20",
        "minhash.hashes_per_bucket=3",
        "minhash.verify_jaccard=0.35",
    ]
    out = tmp_path / "out"
    run_cli(
        "dedup",
        "--input",
        str(tmp_path / "clean"),
        "--output",
        str(out),
        "--levels",
        "minhash",
        "--no-progress",
        *[a for s in preset for a in ("--set", s)],
    )
    removed = set(pl.read_parquet(out / "dedup" / "removed" / "en" / "*.parquet")["id"])
    assert len({f"n{i}" for i in range(20)} & removed) >= 18
    assert not {r for r in removed if r.startswith("o")}
    files = sorted((out / "report" / "logs" / "en" / "minhash_2b_verify" / "stats").glob("*.json"))
    assert not list(out.rglob("*.shingles.tmp"))  # the check's scratch file is gone
    totals = {"verified_pairs": 0, "candidate_pairs": 0}
    for f in files:
        counts = json.loads(f.read_text())[0]["stats"]
        for key in totals:  # datatrove writes a stat updated once as its bare value
            value = counts.get(key, 0)
            totals[key] += value["total"] if isinstance(value, dict) else value
    assert 18 <= totals["verified_pairs"] <= totals["candidate_pairs"]


def test_chunk_words_give_spacy_words_and_datatrove_shingles(tmp_path):
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.text import TextNormConfig, simplify_text

    from cpt.steps.dedup import MinhashSignature
    from cpt.steps.heuristics import ChunkWords

    texts = english_paragraphs(300)
    texts += ["Mr. Darcy's U.S.-made (\"odd\") e-mail: x@y.org, 3.5% -- don't!", "Hello", ""]
    reference = MinhashDedupSignature(str(tmp_path / "a"), config=MinhashConfig())
    fast = MinhashSignature(str(tmp_path / "b"), config=MinhashConfig())
    words = ChunkWords(reference.word_tokenizer, max_chunks=500)  # small: the cache starts over often
    for text in texts:
        simple = simplify_text(text, TextNormConfig())
        assert words(simple) == reference.word_tokenizer.word_tokenize(simple), text
        if len(simple.split()) >= 5:
            assert fast.get_shingles(text).tolist() == reference.get_shingles(text).tolist(), text


def test_chinese_character_shingles_find_character_edits(tmp_path):
    lines = chinese_paragraphs()
    paras = ["".join(lines[i : i + 4]).replace(" ", "") for i in range(0, 400, 4)]
    paras = [p for p in paras if len(p) >= 150][:60]
    rng = random.Random(4)
    fillers = "的一是在不了有和人这中大为上个国我以要他"

    def edit_chars(text: str, rate: float) -> str:  # substitute, insert or delete `rate` of characters
        out = []
        for c in text:
            r = rng.random()
            if r < rate / 3:
                out.append(rng.choice(fillers))
            elif r < 2 * rate / 3:
                out += [c, rng.choice(fillers)]
            elif r >= rate:
                out.append(c)
        return "".join(out)

    docs = [{"id": f"o{i}", "text": p, "url": f"https://a.cn/{i}"} for i, p in enumerate(paras)]
    docs += [
        {"id": f"n{i}", "text": edit_chars(paras[i], 0.10), "url": f"https://b.cn/{i}"} for i in range(20)
    ]
    for d in docs:
        d["lang"] = "zh"
    write_clean_shard(tmp_path / "clean" / "zh" / "000_00000.parquet", docs)
    removed = {}
    for name, extra in (("words", ["--set", "minhash.char_languages=[]"]), ("chars", [])):
        out = tmp_path / name
        run_cli(
            "dedup",
            "--input",
            str(tmp_path / "clean"),
            "--output",
            str(out),
            "--levels",
            "minhash",
            "--config",
            "pipelines/configs/dedup_high_recall.yaml",
            "--no-progress",
            *extra,
        )
        files = list((out / "dedup" / "removed" / "zh").glob("*.parquet"))
        removed[name] = set(pl.read_parquet(files)["id"]) if files else set()
    planted = {f"n{i}" for i in range(20)}
    # the preset's character 3-grams find the copies; jieba word 3-grams lose most of them
    assert len(removed["chars"] & planted) >= 19
    assert not {r for r in removed["chars"] if r.startswith("o")}
    assert len(removed["words"] & planted) < len(removed["chars"] & planted)
