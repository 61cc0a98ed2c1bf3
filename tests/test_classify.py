"""Model-based filtering: fastText classifiers (binary and topic), the score pipeline's tagging,
dropping and routing, and the KL outlier filter on planted outliers and real prose."""

from __future__ import annotations

import base64
import json
import random

import polars as pl
import pytest

from conftest import CHINESE_TEXT, data_path, run_cli
from cpt.demo import sample_warc
from cpt.demo.sample_warc import write_sample_rows
from cpt.steps.classify import build_kl_reference, kl_divergence, kl_units, train_classifier


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Training data for three classifiers and a clean-format input to score."""
    root = tmp_path_factory.mktemp("classify")
    articles = [r for lang in ("en", "zh") for r in sample_warc.sample_articles(11, 60, lang)]
    write_sample_rows(root / "train" / "good" / "a.parquet", articles)
    write_sample_rows(root / "train" / "bad" / "a.parquet", sample_warc.sample_low_quality(11, 120))
    write_sample_rows(root / "train" / "math" / "a.parquet", sample_warc.sample_math(11, 120))
    topics = [r for lang in ("en", "zh") for r in sample_warc.sample_topic_articles(11, 150, lang)]
    write_sample_rows(root / "train" / "topics" / "a.parquet", topics)
    return root


@pytest.fixture(scope="module")
def models(corpus):
    out = corpus / "models"
    t = corpus / "train"
    results = {
        "quality": train_classifier(out / "quality.bin", [str(t / "good")], [str(t / "bad")]),
        "math": train_classifier(out / "math.bin", [str(t / "math")], [str(t / "good"), str(t / "bad")]),
        "topic": train_classifier(
            out / "topic.bin", labeled=[str(t / "topics")], label_column="metadata.topic"
        ),
    }
    return out, results


def test_classifiers_score_held_out_documents_correctly(models, corpus):
    import fasttext

    from cpt.steps.classify import classifier_text

    out, results = models
    for name in ("quality", "math"):
        assert results[name].metrics["macro"]["f1"] >= 0.9, (name, results[name].metrics)
        saved = json.loads((out / f"{name}.bin.json").read_text())
        assert saved["heldout_metrics"]["macro"]["f1"] == results[name].metrics["macro"]["f1"]
        assert saved["settings"]["wordNgrams"] == 2 and saved["heldout_examples"] > 0
    assert results["topic"].labels == sorted(
        {"science", "food", "travel", "history", "sport", "tech", "garden"}
    )
    assert results["topic"].metrics["macro"]["f1"] >= 0.7

    # documents never seen, from another seed: the classifier's verdicts hold
    quality = fasttext.load_model(str(out / "quality.bin"))
    good = [r for lang in ("en", "zh") for r in sample_warc.sample_articles(99, 20, lang)]
    bad = sample_warc.sample_low_quality(99, 40)

    def p_positive(row):
        labels, probs = quality.predict(classifier_text(row["text"], row["lang"]), k=-1)
        return dict(zip(labels, probs, strict=True))["__label__positive"]

    assert sum(p_positive(r) > 0.5 for r in good) >= 36 and sum(p_positive(r) < 0.5 for r in bad) >= 36
    topic = fasttext.load_model(str(out / "topic.bin"))
    unseen = [r for lang in ("en", "zh") for r in sample_warc.sample_topic_articles(99, 40, lang)]
    right = sum(
        topic.predict(classifier_text(r["text"], r["lang"]))[0][0] == "__label__" + r["metadata"]["topic"]
        for r in unseen
    )
    assert right >= 0.8 * len(unseen)


@pytest.mark.slow
def test_score_pipeline_writes_scores_drops_routes_and_counts(models, corpus, tmp_path):
    out, _ = models
    rng = random.Random(5)
    good = [r for lang in ("en", "zh") for r in sample_warc.sample_topic_articles(7, 30, lang)]
    math = sample_warc.sample_math(7, 20)
    bad = sample_warc.sample_low_quality(7, 20)
    outliers = [
        {
            "id": "salad",
            "text": " ".join("".join(rng.choices("qwxzjkvbp", k=rng.randint(4, 9))) for _ in range(300)),
        },
        {"id": "repeat", "text": "a" * 4000},
        {"id": "blob", "text": base64.b64encode(bytes(rng.randrange(256) for _ in range(3000))).decode()},
    ]
    outliers = [
        {**o, "url": None, "lang": "en", "lang_score": 1.0, "source": "planted", "metadata": None}
        for o in outliers
    ]
    write_sample_rows(
        tmp_path / "input" / "en" / "a.parquet",
        [r for r in good + math + bad + outliers if r["lang"] == "en"],
    )
    write_sample_rows(
        tmp_path / "input" / "zh" / "a.parquet", [r for r in good + math + bad if r["lang"] == "zh"]
    )
    result = tmp_path / "scored"
    # a saved reference from clean text (built from the input itself, a small one's outliers would weigh in)
    reference = tmp_path / "kl_reference.json"
    clean = [
        r for lang in ("en", "zh") for r in sample_warc.sample_articles(8, 80, lang)
    ] + sample_warc.sample_math(8, 80)
    build_kl_reference([(r["text"], r["lang"]) for r in clean], reference)
    proc = run_cli(
        "score", "--input", str(tmp_path / "input"), "--output", str(result), "--classifiers", "quality,math,topic",
        "--set", f"models={out}", "--set", f"kl.reference={reference}", "--no-progress",
    )  # fmt: skip
    assert "classify.quality" in proc.stdout and "kl_outlier" in proc.stdout

    kept = pl.read_parquet(result / "*" / "*.parquet")
    routed = pl.read_parquet(result / "math" / "*" / "*.parquet")
    meta = kept["metadata"].struct.unnest()
    assert meta["quality_score"].null_count() == 0 and meta["topic"].null_count() == 0
    assert set(routed["source"]) == {"sample_math"} and routed.height >= 18  # math pages in their own folder
    assert "sample_math" not in set(kept["source"])
    assert kept.filter(pl.col("source") == "sample_low_quality").height <= 2  # dropped under the threshold
    assert kept.filter(pl.col("source") == "sample_topics").height >= 57
    assert not {"salad", "repeat", "blob"} & (set(kept["id"]) | set(routed["id"]))  # the KL filter's
    funnel = json.loads((result / "report" / "funnel.json").read_text())
    rows = {r["step"]: r for r in funnel["steps"]}
    # the planted outliers, and most spam, menus and gibberish, are far from the reference already
    removed = rows["kl"]["removed"].get("kl_outlier", 0) + rows["classify.quality"]["removed"].get(
        "quality_below_threshold", 0
    )
    assert removed >= 3 + 18
    assert funnel["outputs"].get("math", 0) == routed.height

    # without the KL filter, the quality classifier drops the low-quality documents itself; the input
    # named as two, one a glob, is read whole and once
    again = tmp_path / "scored_no_kl"
    run_cli(
        "score", "--input", str(tmp_path / "input" / "en"), str(tmp_path / "in*" / "z?"), "--output", str(again),
        "--classifiers", "quality,math", "--set", f"models={out}", "--set", "kl.enabled=false", "--no-progress",
    )  # fmt: skip
    steps = {r["step"]: r for r in json.loads((again / "report" / "funnel.json").read_text())["steps"]}
    assert "kl" not in steps and steps["classify.quality"]["removed"]["quality_below_threshold"] >= 18
    assert steps["read"]["docs_in"] == rows["read"]["docs_in"] == len(good + math + bad + outliers)


def test_kl_filter_removes_planted_outliers_and_keeps_real_prose(tmp_path):
    english = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    chinese = data_path(*CHINESE_TEXT).read_text(encoding="utf-8")
    paragraphs = [p.replace("\n", " ") for p in english.split("\n\n") if len(p.split()) >= 40]
    lines = [line for line in chinese.splitlines() if len(line) >= 60]
    reference = build_kl_reference(
        [(p, "en") for p in paragraphs[:300]] + [(line, "zh") for line in lines[:600]], tmp_path / "ref.json"
    )
    rng = random.Random(0)
    held_out = [(p, "en") for p in paragraphs[300:360]] + [(line, "zh") for line in lines[600:660]]
    for text, lang in held_out:
        assert kl_divergence(kl_units(text, lang), reference[lang]) < 4.0, text[:80]
    planted = [
        (
            " ".join(
                "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(200)
            ),
            "en",
        ),
        ("".join(chr(rng.randrange(0x4E00, 0x9FA5)) for _ in range(400)), "zh"),  # character salad
        ("a" * 3000, "en"),
        ("哈" * 1000, "zh"),
        (base64.b64encode(bytes(rng.randrange(256) for _ in range(2000))).decode(), "en"),
    ]
    for text, lang in planted:
        assert kl_divergence(kl_units(text, lang), reference[lang]) > 4.0, text[:40]


def test_topic_folders_are_selected_by_a_stage_where(models, corpus, tmp_path):
    """score tags topics -> tokenize --split-by topic -> a stage takes `where: topic in [...]`."""
    from cpt.mix.plan import MixError, plan
    from cpt.mix.stage import load_stage
    from cpt.tok.merge import merge
    from cpt.tok.train import train

    out, _ = models
    rows = [r for lang in ("en", "zh") for r in sample_warc.sample_topic_articles(21, 40, lang)]
    for r in rows:
        r["metadata"] = None  # the topic comes from the classifier, not the generator
    write_sample_rows(tmp_path / "input" / "a.parquet", rows)
    run_cli("score", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "scored"),
            "--classifiers", "topic", "--set", f"models={out}", "--set", "kl.enabled=false", "--no-progress")  # fmt: skip
    train(corpus / "train" / "good", tmp_path / "sp", 2000, options={"hard_vocab_limit": "false"})
    merge(tmp_path / "sp", tmp_path / "sp", tmp_path / "tok")
    run_cli("tokenize", "--input", str(tmp_path / "scored"), "--tokenizer", str(tmp_path / "tok"),
            "--output", str(tmp_path / "tokens"), "--split-by", "topic", "--no-progress")  # fmt: skip

    topics = pl.read_parquet(tmp_path / "scored" / "*" / "*.parquet")["metadata"].struct.field("topic")
    counts = topics.value_counts()
    chosen = counts.sort("count", descending=True)["topic"].to_list()[:2]
    for topic in counts["topic"]:
        labels = json.loads((tmp_path / "tokens" / topic / "tokens.json").read_text())["labels"]
        assert labels == {"topic": topic}
    stage_file = tmp_path / "stage.yaml"
    stage_file.write_text(
        f"name: t\nseq_len: 64\ntokens: 2000\nseed: 0\n"
        f"sources:\n  - {{name: picked, path: {tmp_path / 'tokens'}, weight: 1, where: 'topic in [{', '.join(chosen)}]'}}\n"
    )
    manifest = plan(load_stage(stage_file), str(stage_file))
    documents = sum(f["documents"] for f in manifest["sources"][0]["files"])
    assert documents == topics.is_in(chosen).sum()
    stage_file.write_text(
        stage_file.read_text().replace(f"topic in [{', '.join(chosen)}]", "topic == nothing")
    )
    with pytest.raises(MixError, match="no token shards labelled topic == nothing"):
        plan(load_stage(stage_file), str(stage_file))


@pytest.mark.slow
def test_clean_runs_the_kl_and_classify_steps(models, tmp_path):
    out, _ = models
    sample_warc.write_sample_warc(tmp_path / "warc" / "s.warc.gz", seed=3, n_articles=8)
    reference = tmp_path / "ref.json"
    clean_text = [r for lang in ("en", "zh") for r in sample_warc.sample_articles(8, 80, lang)]
    build_kl_reference([(r["text"], r["lang"]) for r in clean_text], reference)
    steps = "[url_filter,extract,langid,heuristics,dirty_words,pii,kl,classify]"
    proc = run_cli(
        "clean", "--input", str(tmp_path / "warc"), "--output", str(tmp_path / "clean"), "--no-progress",
        "--set", f"steps={steps}", "--set", f"score.kl.reference={reference}", "--set", f"score.models={out}",
        "--set", "score.classifiers.quality.action=tag", "--set", "score.classifiers.topic.action=tag",
    )  # fmt: skip
    assert "classify.quality" in proc.stdout and "\nkl " in proc.stdout
    meta = pl.read_parquet(tmp_path / "clean" / "*" / "*.parquet")["metadata"].struct.unnest()
    assert meta.height > 0 and meta["quality_score"].null_count() == 0 and meta["topic"].null_count() == 0
    assert meta["kl_divergence"].null_count() < meta.height
