"""Readers: every record is counted, broken input is counted and skipped, never fatal."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from conftest import data_path
from cpt.funnel import row_from_stats
from cpt.steps.read import CountingJsonlReader, RobustWarcReader, decode_payload, input_kind, list_inputs

PAGE = "<html><body><article><h1>T</h1><p>{}</p></article></body></html>"


def response(writer: WARCWriter, url: str, body: bytes, ctype: str = "text/html; charset=utf-8") -> bytes:
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
    w.write_record(w.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))
    return buf.getvalue()


def read_all(reader) -> tuple[list, dict]:
    docs = list(reader.run())
    return docs, row_from_stats("read", reader.stats.stats.to_dict())


def test_broken_header_and_truncated_gzip_are_counted_and_reading_resumes(tmp_path):
    w = WARCWriter(io.BytesIO(), gzip=True)
    good1 = response(w, "https://a.example/1", PAGE.format("first page").encode())
    garbage = gzip.compress(b"WARC/1.0\r\nthis is not a header line\r\n\r\nxxxx\r\n\r\n")
    good2 = response(w, "https://a.example/2", PAGE.format("after the broken one").encode())
    binary = response(w, "https://a.example/bin", bytes(range(256)) * 20, "text/html")
    last = response(w, "https://a.example/3", PAGE.format("cut short " * 500).encode())
    (tmp_path / "x.warc.gz").write_bytes(good1 + garbage + good2 + binary + last[: len(last) // 2])

    docs, row = read_all(RobustWarcReader(str(tmp_path)))
    assert [d.metadata["url"] for d in docs] == ["https://a.example/1", "https://a.example/2"]
    assert row.removed == {"broken_record": 1, "undecodable": 1, "truncated_gzip": 1}
    assert row.docs_in == row.kept + row.removed_total == 5


def test_real_blackbook_warc_reads_all_822_records():
    folder = data_path("warc")
    reader = RobustWarcReader(str(folder), glob_pattern="IAH-20080430204825-00000-blackbook.warc.gz")
    docs, row = read_all(reader)
    assert row.docs_in == 822
    assert row.removed["warc_request"] == 261 and row.kept == len(docs) > 50
    assert all(d.metadata["format"] == "html" and d.metadata["url"] for d in docs)


def test_wet_conversions_are_plain_text_documents():
    folder = data_path("warc")
    docs, row = read_all(RobustWarcReader(str(folder), glob_pattern="whirlwind.warc.wet.gz"))
    assert row.kept == 1 and docs[0].metadata["format"] == "text" and "<html" not in docs[0].text.lower()


def test_jsonl_broken_lines_and_truncated_gzip_are_counted(tmp_path):
    lines = [json.dumps({"text": f"doc {i}", "id": str(i)}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"text": ""}))
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    whole = gzip.compress(("\n".join(lines) + "\n").encode())
    (tmp_path / "b.jsonl.gz").write_bytes(whole[: len(whole) - 12])
    docs, row = read_all(CountingJsonlReader(str(tmp_path), glob_pattern="*.jsonl*"))
    assert row.docs_in == row.kept + row.removed_total
    assert row.removed["broken_json"] >= 1 and row.removed["empty"] >= 1
    assert row.removed.get("truncated_file", 0) == 1
    assert all(d.metadata["format"] == "text" for d in docs)


def test_decode_payload_charsets():
    assert decode_payload("中文网页。".encode("gbk"), "text/html; charset=gbk") == "中文网页。"
    assert decode_payload(b'<meta charset="gb2312">' + "简体".encode("gb2312")).endswith("简体")
    assert decode_payload("naïve".encode("latin-1"), "text/html; charset=iso-8859-1") == "naïve"
    # UTF-8 wins over a wrong declaration (a GBK decode of UTF-8 bytes would "succeed" as mojibake)
    assert decode_payload("中文".encode(), "text/html; charset=gbk") == "中文"
    assert decode_payload(bytes(range(256)) * 10) is None


def test_one_input_file_is_read_from_its_folder_by_name(tmp_path):
    (tmp_path / "news.txt").write_text("新闻\n", encoding="utf-8")
    (tmp_path / "other.txt").write_text("其他\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("# notes\n", encoding="utf-8")
    assert list_inputs(str(tmp_path / "news.txt")) == (str(tmp_path), {"txt": ["news.txt"]})
    with pytest.raises(FileNotFoundError, match=r"notes\.md: not an input file cpt reads"):
        list_inputs(str(tmp_path / "notes.md"))


def test_input_kind_by_name():
    assert input_kind("a/CC-MAIN-1.warc.gz") == "warc"
    assert input_kind("CC-MAIN-1.warc.wet.gz") == "wet"
    assert input_kind("x.jsonl.zst") == "jsonl" and input_kind("x.parquet") == "parquet"
    assert (
        input_kind("notes.txt") == "txt"
        and input_kind("news.txt.gz") == "txt"
        and input_kind("pku.utf8") == "txt"
    )
    assert input_kind("notes.md") is None and input_kind("page.html") is None
