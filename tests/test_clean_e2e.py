"""`python pipelines/run.py clean` end to end, as a user runs it, on generated and real WARCs."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import polars as pl
import pytest

from conftest import data_path, run_cli, run_cli_until
from cpt.demo.sample_warc import write_sample_warc
from texts import ARTICLES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    folder = tmp_path_factory.mktemp("warc")
    manifest = write_sample_warc(folder / "sample.warc.gz", seed=0, n_articles=12, large_page_mb=0.5)
    return folder, manifest.categories


@pytest.fixture(scope="module")
def cleaned(sample, tmp_path_factory):
    folder, _ = sample
    out = tmp_path_factory.mktemp("clean")
    # as a user runs it: progress bars on (one file, so one task: its reader's bar of documents)
    proc = run_cli("clean", "--input", str(folder / "sample.warc.gz"), "--output", str(out))
    return out, proc


def read_shards(out: Path) -> pl.DataFrame:
    files = sorted(out.glob("*/*.parquet"))
    return pl.concat([pl.read_parquet(f).with_columns(pl.lit(f.parent.name).alias("folder")) for f in files])


def is_non_public_ip(s: str) -> bool:
    """Private, reserved and documentation addresses are kept by design (FineWeb: public IPs only)."""
    try:
        return not ipaddress.ip_address(s).is_global
    except ValueError:
        return False


def funnel(out: Path) -> dict:
    return json.loads((out / "report" / "funnel.json").read_text())


def test_funnel_is_conserved_at_every_step_and_printed(cleaned):
    out, proc = cleaned
    steps = funnel(out)["steps"]
    assert [s["step"] for s in steps][:4] == ["read", "url_filter", "extract", "langid"]
    for s in steps:
        assert s["docs_in"] == s["kept"] + sum(s["removed"].values()), s
    for prev, s in zip(steps, steps[1:], strict=False):
        assert s["docs_in"] == prev["kept"]
    assert "heuristics.gopher_repetition" in proc.stdout and "written by language" in proc.stdout

    # broken down by input file (all steps) and by language (from language ID on), as printed
    data, kept = funnel(out), {s["step"]: s["kept"] for s in steps}
    assert data["by_input"] == {"sample.warc.gz": kept}
    after_langid = [s["step"] for s in steps][3:]
    for step in after_langid:
        assert sum(counts[step] for counts in data["by_language"].values()) == kept[step], step
    assert {lang: counts["write"] for lang, counts in data["by_language"].items()} == data["outputs"]
    assert "by language" in proc.stdout and "by input file" not in proc.stdout  # one file: the table's own
    # quiet by default: the funnel and what needs a look, not datatrove's log of every task
    # lines a terminal scrolls: a progress bar redraws its line with \r, which `splitlines` would count
    assert (proc.stdout + proc.stderr).count("\n") < 40, proc.stdout + proc.stderr
    assert proc.stderr.count("Document progress") >= 1 and "File progress" not in proc.stderr
    assert set(read_shards(out)["source"]) == {"sample"}  # the input file's stem


def test_chinese_and_english_pages_are_routed_to_their_folders(cleaned, sample):
    out, _ = cleaned
    _, cats = sample
    df = read_shards(out)
    assert set(df["folder"]) == {"en", "zh"}
    assert (df["folder"] == df["lang"]).all()
    zh_urls, en_urls = set(cats["zh_article"]), set(cats["en_article"])
    got = dict(zip(df["url"], df["lang"], strict=True))
    assert sum(got.get(u) == "zh" for u in zh_urls) >= len(zh_urls) - 1
    assert sum(got.get(u) == "en" for u in en_urls) >= len(en_urls) - 1
    assert not any(got.get(u) == "en" for u in zh_urls) and not any(got.get(u) == "zh" for u in en_urls)
    # the GBK-encoded Chinese page was decoded, not mojibake
    zh_text = "".join(df.filter(pl.col("url").is_in(cats["non_utf8"]) & (pl.col("lang") == "zh"))["text"])
    assert zh_text and "的" in zh_text


def test_pii_is_redacted_in_every_output_document(cleaned, sample):
    out, _ = cleaned
    _, cats = sample
    df = read_shards(out)
    pii_docs = df.filter(pl.col("url").is_in(cats["pii"]))
    assert len(pii_docs) >= 3
    everything = "\n".join(df["text"])
    redactable = [s for s in cats["pii_strings"] if not is_non_public_ip(s)]
    assert len(redactable) >= 8
    for secret in redactable:
        assert secret not in everything, secret
    assert (pii_docs["metadata"].struct.field("pii_redactions") > 0).all()


def test_spam_blocked_urls_other_languages_and_broken_input_do_not_reach_the_output(cleaned, sample):
    out, _ = cleaned
    _, cats = sample
    urls = set(read_shards(out)["url"])
    for category in ("spam", "blocked_url", "other_language", "empty", "non_html", "truncated"):
        assert not urls & set(cats[category]), category
    read = funnel(out)["steps"][0]["removed"]
    assert read["broken_record"] == 1 and read["truncated_record"] == 1
    assert set(cats["after_broken"]) <= urls  # the page after the broken header was recovered


def test_steps_extract_alone_writes_the_extracted_text(sample, tmp_path):
    folder, cats = sample
    run_cli("clean", "--input", str(folder), "--output", str(tmp_path), "--steps", "extract", "--no-progress")
    df = read_shards(tmp_path)
    assert set(df["folder"]) == {"und"}
    assert [s["step"] for s in funnel(tmp_path)["steps"]] == ["read", "extract", "write"]
    assert not df["text"].str.contains("<html|<div|<p>").any()
    assert len(df) > len(cats["en_article"]) + len(cats["zh_article"])


def _shards_by_id(out: Path) -> list[dict]:
    return sorted(read_shards(out).drop("folder").to_dicts(), key=lambda r: r["id"])


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    inputs = tmp_path / "in"
    for seed in (1, 2):
        write_sample_warc(inputs / f"part{seed}.warc.gz", seed=seed, n_articles=6, large_page_mb=0.1)
    args = ["clean", "--input", str(inputs), "--tasks", "2", "--workers", "1", "--no-progress"]
    whole = tmp_path / "whole"
    run_cli(*args, "--output", str(whole))

    killed = tmp_path / "killed"
    completions = killed / "report" / "logs" / "completions"
    run_cli_until(completions, *args, "--output", str(killed))
    done = len(list(completions.iterdir()))
    assert done == 1, f"kill landed after {done} of 2 tasks"
    assert not (killed / "report" / "funnel.json").exists()

    rerun = run_cli(*args, "--output", str(killed))
    assert "written by language" in rerun.stdout
    assert not list(killed.rglob("*.tmp"))
    assert _shards_by_id(killed) == _shards_by_id(whole)
    assert funnel(killed) == funnel(whole)


def test_slurm_dry_run_prints_the_array_job_script(sample, tmp_path):
    folder, _ = sample
    proc = run_cli(
        "clean",
        "--input",
        str(folder),
        "--output",
        str(tmp_path),
        "--executor",
        "slurm",
        "--tasks",
        "4",
        "--dry-run",
        "--set",
        "slurm.partition=cpu",
        "--set",
        "slurm.time=02:00:00",
    )
    assert "#SBATCH --array=0-3" in proc.stdout
    assert "#SBATCH --partition=cpu" in proc.stdout and "#SBATCH --time=02:00:00" in proc.stdout
    assert "launch_pickled_pipeline" in proc.stdout
    assert not list(tmp_path.glob("*/*.parquet"))


def test_bad_input_and_bad_config_give_one_line_errors(tmp_path):
    missing = tmp_path / "nope"
    proc = run_cli("clean", "--input", str(missing), "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and str(missing) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("langid: [oops\n")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "hello"}\n')
    proc = run_cli(
        "clean",
        "--input",
        str(tmp_path / "in"),
        "--output",
        str(tmp_path / "o"),
        "--config",
        str(bad),
        check=False,
    )
    assert proc.returncode == 2 and "bad.yaml" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_rerun_with_other_settings_into_the_same_output_is_refused(sample, tmp_path):
    folder, _ = sample
    run_cli("clean", "--input", str(folder), "--output", str(tmp_path), "--steps", "extract", "--limit", "5")
    proc = run_cli(
        "clean", "--input", str(folder), "--output", str(tmp_path), "--steps", "extract", check=False
    )
    assert proc.returncode == 2 and "other settings" in proc.stderr and "limit" in proc.stderr


def test_real_warcs_from_data_path(tmp_path):
    folder = data_path("warc")
    run_cli("clean", "--input", str(folder), "--output", str(tmp_path), "--no-progress")
    f = funnel(tmp_path)
    read = f["steps"][0]
    assert read["docs_in"] >= 822 + 50  # blackbook alone has 822 records
    assert f["outputs"].get("en", 0) > 10
    df = read_shards(tmp_path)
    assert df["url"].str.starts_with("http").all() and (df["text"].str.len_chars() > 100).all()


def test_jsonl_and_parquet_inputs_in_one_folder(tmp_path):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    rows = [{"id": f"j{i}", "text": t} for i, t in enumerate(ARTICLES)]
    (inputs / "a.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{broken\n"
    )
    pl.DataFrame(
        [{"id": f"p{i}", "text": t, "url": f"https://p.example/{i}"} for i, t in enumerate(ARTICLES)]
    ).write_parquet(inputs / "sub" / "b.parquet")
    out = tmp_path / "out"
    run_cli("clean", "--input", str(inputs), "--output", str(out), "--no-progress")
    read = funnel(out)["steps"][0]
    assert read["docs_in"] == 2 * len(ARTICLES) + 1 and read["removed"] == {"broken_json": 1}
    assert sorted((out / "report" / "inputs").iterdir())[0].name == "jsonl.txt"
    df = read_shards(out)
    assert {i[0] for i in df["id"]} == {"j", "p"}
    assert set(df["lang"]) == {"en", "zh"}


def test_many_timeouts_are_reported_with_the_setting_to_change(tmp_path):
    """A CPU limit far too low for real pages (the shared WARCs hold several that need 0.3-1.1 s):
    over 1% of pages time out, and the run says so on stderr and in funnel.json."""
    folder = data_path("warc")
    proc = run_cli("clean", "--input", str(folder), "--output", str(tmp_path), "--steps", "extract",
                   "--set", "extract.cpu_timeout=0.1", "--no-progress")  # fmt: skip
    extract = next(s for s in funnel(tmp_path)["steps"] if s["step"] == "extract")
    assert extract["removed"]["timeout"] >= 2
    assert extract["counters"]["retried_timeout"] >= extract["removed"]["timeout"]  # each was tried twice
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "extract.cpu_timeout (now 0.1)" in warnings[0]
    assert funnel(tmp_path)["warnings"] == [warnings[0].removeprefix("warning: ")]
