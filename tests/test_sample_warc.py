"""Tests for cpt.demo.sample_warc: determinism, what each category holds, and the broken tail of the file."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from cpt.demo import sample_warc
from cpt.demo.sample_warc import SampleManifest, write_sample_warc

N_ARTICLES = 6
LARGE_MB = 0.2
TAIL = ("broken_header", "after_broken", "truncated")


@dataclass
class Rec:
    rec_type: str | None
    url: str | None
    date: str | None
    content_type: str | None
    body: bytes


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleManifest]:
    path = tmp_path_factory.mktemp("warc") / "sample.warc.gz"
    return path, write_sample_warc(path, seed=0, n_articles=N_ARTICLES, large_page_mb=LARGE_MB)


def read_records(data: bytes) -> tuple[list[Rec], Exception | None]:
    """Records warcio yields until it meets a record without a type or raises."""
    records: list[Rec] = []
    try:
        for record in ArchiveIterator(io.BytesIO(data)):
            if record.rec_type is None:  # warcio's rendering of the garbage header
                return records, None
            content_type = record.http_headers.get_header("Content-Type") if record.http_headers else None
            records.append(
                Rec(
                    record.rec_type,
                    record.rec_headers.get_header("WARC-Target-URI"),
                    record.rec_headers.get_header("WARC-Date"),
                    content_type,
                    record.content_stream().read(),
                )
            )
    except ArchiveLoadFailed as exc:
        return records, exc
    return records, None


def gzip_members(data: bytes) -> list[tuple[int, bytes, bool]]:
    """(offset, decompressed bytes, complete) for every gzip member, resynchronising at each one."""
    members, pos = [], 0
    while pos < len(data):
        inflater = zlib.decompressobj(wbits=31)
        out = inflater.decompress(data[pos:])
        members.append((pos, out, inflater.eof))
        if not inflater.eof:
            break
        pos = len(data) - len(inflater.unused_data)
    return members


def responses(records: list[Rec]) -> list[Rec]:
    return [r for r in records if r.rec_type == "response"]


def test_sentence_pools() -> None:
    assert len(sample_warc.EN_SENTENCES) >= 80 and len(set(sample_warc.EN_SENTENCES)) == len(
        sample_warc.EN_SENTENCES
    )
    assert len(sample_warc.ZH_SENTENCES) >= 80 and len(set(sample_warc.ZH_SENTENCES)) == len(
        sample_warc.ZH_SENTENCES
    )
    assert all(12 <= len(s.split()) <= 30 for s in sample_warc.EN_SENTENCES)
    assert all(20 <= len(s) <= 50 and s[-1] in "。！？" for s in sample_warc.ZH_SENTENCES)


def test_same_seed_same_bytes_other_seed_other_bytes(
    tmp_path: Path, sample: tuple[Path, SampleManifest]
) -> None:
    path, _ = sample
    again = write_sample_warc(
        tmp_path / "again.warc.gz", seed=0, n_articles=N_ARTICLES, large_page_mb=LARGE_MB
    )
    other = write_sample_warc(
        tmp_path / "other.warc.gz", seed=1, n_articles=N_ARTICLES, large_page_mb=LARGE_MB
    )
    assert Path(again.path).read_bytes() == path.read_bytes()
    assert Path(other.path).read_bytes() != path.read_bytes()


def test_manifest_categories(sample: tuple[Path, SampleManifest]) -> None:
    _, manifest = sample
    assert list(manifest.categories) == [*sample_warc.CATEGORIES, "pii_strings"]
    assert all(manifest.categories[name] for name in manifest.categories)
    counts = {name: len(urls) for name, urls in manifest.categories.items()}
    assert counts == {
        "en_article": N_ARTICLES,
        "zh_article": N_ARTICLES,
        "exact_duplicate": 4,
        "near_duplicate": 4,
        "same_url": 2,
        "spam": 4,
        "pii": 4,
        "non_utf8": 3,
        "empty": 3,
        "large": 1,
        "other_language": 2,
        "blocked_url": 1,
        "non_html": 2,
        "broken_header": 1,
        "after_broken": 1,
        "truncated": 1,
        "pii_strings": 13,
    }
    # every URL is distinct except the two re-crawls, which reuse article URLs
    urls = [
        u for name, us in manifest.categories.items() if name not in ("pii_strings", "same_url") for u in us
    ]
    assert len(urls) == len(set(urls))
    articles = set(manifest.categories["en_article"]) | set(manifest.categories["zh_article"])
    assert set(manifest.categories["same_url"]) <= articles
    assert set(manifest.duplicate_of) == set(
        manifest.categories["exact_duplicate"] + manifest.categories["near_duplicate"]
    )
    assert set(manifest.duplicate_of.values()) <= articles
    assert json.loads(manifest.to_json())["categories"] == manifest.categories


def test_records_per_category_up_to_the_broken_header(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    records, _ = read_records(path.read_bytes())
    planted = Counter(
        url
        for name, urls in manifest.categories.items()
        if name not in (*TAIL, "pii_strings")
        for url in urls
    )
    n_responses = sum(planted.values())
    assert Counter(r.url for r in responses(records)) == planted
    assert Counter(r.rec_type for r in records) == {
        "warcinfo": 1,
        "request": n_responses,
        "response": n_responses,
        "metadata": 1,
    }
    assert len(records) == manifest.records_before_broken == 2 * n_responses + 2
    assert manifest.n_records == manifest.records_before_broken + 5
    assert records[0].rec_type == "warcinfo"
    # every response comes right after its request
    for i, record in enumerate(records):
        if record.rec_type == "response":
            assert records[i - 1].rec_type == "request" and records[i - 1].url == record.url
    # strict warcio reading stops at the broken member: nothing of the tail comes through
    tail_urls = {url for name in TAIL for url in manifest.categories[name]}
    assert not tail_urls & {r.url for r in records}


def test_strict_reader_raises_at_the_broken_header(sample: tuple[Path, SampleManifest]) -> None:
    path, _ = sample
    with pytest.raises(ArchiveLoadFailed), open(path, "rb") as f:
        for record in ArchiveIterator(f):
            record.content_stream().read()


def test_copies_come_after_their_originals(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    records = responses(read_records(path.read_bytes())[0])
    first = {}
    for i, record in enumerate(records):
        first.setdefault(record.url, i)
    body = {r.url: r.body for r in records}
    for copy, original in manifest.duplicate_of.items():
        assert first[original] < first[copy]
    for copy in manifest.categories["exact_duplicate"]:
        assert body[copy] == body[manifest.duplicate_of[copy]]
    for copy in manifest.categories["near_duplicate"]:
        assert body[copy] != body[manifest.duplicate_of[copy]]
    for url in manifest.categories["same_url"]:
        crawls = [r for r in records if r.url == url]
        assert len(crawls) == 2 and crawls[1].date > crawls[0].date
    recrawled = {url: [r.body for r in records if r.url == url] for url in manifest.categories["same_url"]}
    assert sorted(bodies[0] == bodies[1] for bodies in recrawled.values()) == [False, True]


def test_pii_strings_are_in_the_pii_pages(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    records = responses(read_records(path.read_bytes())[0])
    pii_html = [r.body.decode("utf-8") for r in records if r.url in manifest.categories["pii"]]
    assert len(pii_html) == 4
    assert all(any(s in page for s in manifest.categories["pii_strings"]) for page in pii_html)
    for planted in manifest.categories["pii_strings"]:
        assert any(planted in page for page in pii_html), planted
    others = b"".join(r.body for r in records if r.url not in manifest.categories["pii"])
    assert b"john.smith@example.org" not in others


def test_encodings(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    records = [
        r for r in responses(read_records(path.read_bytes())[0]) if r.url in manifest.categories["non_utf8"]
    ]
    by_charset = {r.content_type.split("charset=")[1]: r.body for r in records}
    assert set(by_charset) == {"gbk", "iso-8859-1", "utf-8"}

    gbk = by_charset["gbk"]
    text = gbk.decode("gbk")
    assert '<meta charset="gbk">' in text and sum("\u4e00" <= c <= "\u9fff" for c in text) > 100
    with pytest.raises(UnicodeDecodeError):
        gbk.decode("utf-8")

    latin1 = by_charset["iso-8859-1"]
    assert "Zürich" in latin1.decode("latin-1")
    with pytest.raises(UnicodeDecodeError):
        latin1.decode("utf-8")

    with pytest.raises(UnicodeDecodeError):
        by_charset["utf-8"].decode("utf-8")
    assert b"\xff\xfe" in by_charset["utf-8"]


def test_other_categories_payloads(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    records = {r.url: r for r in responses(read_records(path.read_bytes())[0])}
    empty = sorted(records[url].body for url in manifest.categories["empty"])
    assert empty[0] == b"" and b"<html><body></body></html>" in empty and b"<article>" not in empty[-1]
    assert len(records[manifest.categories["large"][0]].body) >= LARGE_MB * 1024 * 1024
    assert {records[url].content_type for url in manifest.categories["non_html"]} == {
        "application/pdf",
        "image/png",
    }
    assert "porn" in manifest.categories["blocked_url"][0]
    spam = [records[url].body.decode("utf-8") for url in manifest.categories["spam"]]
    assert any(page.count("BUY CHEAP WATCHES NOW best price click here") == 200 for page in spam)
    assert any(page.count("免费领取优惠券点击这里") >= 100 for page in spam)
    zh = records[manifest.categories["zh_article"][0]].body.decode("utf-8")
    assert '<html lang="zh-CN">' in zh and "版权所有" in zh and "首页" in zh


def test_tail_broken_then_sentinel_then_truncated(sample: tuple[Path, SampleManifest]) -> None:
    path, manifest = sample
    data = path.read_bytes()
    with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
        gzip.decompress(data)

    members = gzip_members(data)
    assert len(members) == manifest.n_records
    assert all(complete for _, _, complete in members[:-1]) and not members[-1][2]
    broken_offset, broken, _ = members[-5]
    assert broken.startswith(b"WARC/1.0\r\nThis is not a header line\r\n")

    # a reader that resynchronises at the next gzip member recovers the sentinel, then the truncated record
    recovered, _ = read_records(data[members[-4][0] :])
    sentinel = [r for r in recovered if r.url in manifest.categories["after_broken"]]
    assert [r.rec_type for r in sentinel] == ["request", "response"]
    assert b"</html>" in sentinel[1].body and b"<article>" in sentinel[1].body
    truncated = [r for r in recovered if r.url in manifest.categories["truncated"]]
    assert truncated and b"</html>" not in truncated[-1].body


def test_too_few_articles(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_sample_warc(tmp_path / "unused.warc.gz", n_articles=4)
    assert not list(tmp_path.iterdir())


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "dir" / "cli.warc.gz"
    manifest_path = tmp_path / "meta" / "manifest.json"
    assert (
        sample_warc.main(
            [
                str(out),
                "--seed",
                "3",
                "--articles",
                "5",
                "--large-mb",
                "0.1",
                "--manifest",
                str(manifest_path),
            ]
        )
        == 0
    )
    assert out.is_file() and out.stat().st_size > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["cli.warc.gz"]  # no .tmp left behind
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["path"] == str(out) and len(manifest["categories"]["en_article"]) == 5
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and str(out) in printed and str(manifest["n_records"]) in printed

    plain = tmp_path / "plain.warc.gz"
    assert sample_warc.main([str(plain), "--articles", "5", "--large-mb", "0.1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta", "nested", "plain.warc.gz"]


def test_instruction_and_math_rows_are_clean_shards(tmp_path: Path) -> None:
    import polars as pl

    from cpt.shards import CLEAN_SCHEMA

    for make in (sample_warc.sample_instructions, sample_warc.sample_math):
        path = sample_warc.write_sample_rows(tmp_path / f"{make.__name__}.parquet", make(seed=1, n=20))
        frame = pl.read_parquet(path)
        assert frame.columns == CLEAN_SCHEMA.names and frame.height == 20
        assert frame["lang"].value_counts().sort("lang")["count"].to_list() == [10, 10]
        assert make(seed=1, n=20) == make(seed=1, n=20) != make(seed=2, n=20)
    pairs = sample_warc.sample_instructions(seed=0, n=4)
    assert all(p["text"].startswith("<human>: ") and "\n<bot>: " in p["text"] for p in pairs)
    problem = sample_warc.sample_math(seed=0, n=1)[0]["text"]
    a_times_b = problem.split("holds ")[1].split(" books")[0]  # "a × b = ab"
    a, b, ab = (int(x) for x in a_times_b.replace("×", "=").split("="))
    assert a * b == ab
