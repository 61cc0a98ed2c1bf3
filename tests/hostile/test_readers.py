"""Hostile input for the readers, the shard writer and `tokenize`, through the real commands: every
probe expects a counted reason in the funnel (documents in = kept + removed) or one `error:` line with
exit 2, and nothing written outside the output folder."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from conftest import llama3_tokenizer, run_cli
from cpt.shards import CLEAN_SCHEMA, METADATA_FIELDS

CLEAN = ["--no-progress", "--steps", "url_filter"]  # a cheap step: the probes are about reading and writing
WORDS = "river stone lantern orchard velvet harbour meadow copper thistle ember quarry willow".split()


def _page(i: int, words: int = 60) -> bytes:
    rng = random.Random(i)
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"<html><body><article><h1>Page {i}</h1><p>{body}</p></article></body></html>".encode()


def _warc(n: int, gzip_members: bool, words: int = 60) -> bytes:
    """`n` HTML responses; one gzip member per record or none (plain WARC)."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gzip_members)
    for i in range(n):
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1")
        payload = io.BytesIO(_page(i, words))
        writer.write_record(
            writer.create_warc_record(
                f"https://a.example/{i}", "response", payload=payload, http_headers=http
            )
        )
    return buf.getvalue()


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def _parquet(table: pa.Table, **kwargs) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def _texts(n: int, **fields) -> list[dict]:
    return [{"text": " ".join(random.Random(i).choice(WORDS) for _ in range(30)), **fields} for i in range(n)]


def _corrupt_middle_member(n: int) -> bytes:
    """A per-record gzip WARC whose middle member has a damaged byte inside its deflate data (large
    pages: the damage lies past the first block warcio inflates, where warcio once read on silently)."""
    members = [bytearray(_warc(1, True, words=40_000)) for _ in range(n)]
    middle = members[n // 2]
    middle[len(middle) * 2 // 3] ^= 0xFF
    return b"".join(members)


def _prose(size: int) -> bytes:
    rng = random.Random(0)
    lines = []
    while sum(map(len, lines)) < size:
        lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + ".\n")
    return "".join(lines).encode()


WHOLE = gzip.compress(_warc(5, False), mtime=0)  # `gzip file.warc`: one stream holding every record

BAD_TEXT = [{"text": 12345}, {"text": None}, {"text": ""}, {"text": "  \n"}, {"id": "x"}, *_texts(2)]
WRONG_TYPES = [{**_texts(1)[0], "url": 5, "id": 7, "date": 20230101, "quality_score": "high"}]
NULL_TEXT = pa.table({"id": ["1", "2", "3", "4"], "text": [_texts(1)[0]["text"], None, "", "x y"]})
FIFTY = pa.table({"text": [t["text"] for t in _texts(50)]})
NO_TEXT = pa.table({"id": list("abcde"), "body": list("vwxyz")})


def _case(description: str, files: dict[str, bytes], docs_in: int, kept: int, removed: dict[str, int]):
    """A probe: the input files, the documents `read` counts in and keeps, its removal reasons."""
    return pytest.param(files, docs_in, kept, removed, id=description)


# fmt: off
CLEAN_CASES = [
    _case("whole-file gzip WARC", {"a.warc.gz": WHOLE}, 5, 5, {}),
    _case("whole-file gzip WARC cut short", {"a.warc.gz": WHOLE[: len(WHOLE) * 2 // 3]}, 3, 2,
          {"truncated_gzip": 1}),
    _case("per-record gzip WARC, a member damaged", {"a.warc.gz": _corrupt_middle_member(3)}, 3, 2,
          {"corrupt_gzip": 1}),
    _case("gzip of HTML named .warc.gz", {"a.warc.gz": gzip.compress(_page(0) * 50, mtime=0)}, 1, 0,
          {"not_warc": 1}),
    _case("60 KB of prose named .warc.gz", {"a.warc.gz": _prose(60_000), "b.warc.gz": _warc(2, True)}, 3, 2,
          {"not_warc": 1}),
    _case("jsonl text a number, null, empty, blank, missing", {"a.jsonl": _jsonl(BAD_TEXT)}, 7, 2,
          {"bad_text": 1, "empty": 4}),
    _case("jsonl fields of the wrong type", {"a.jsonl": _jsonl(WRONG_TYPES)}, 1, 1, {}),
    _case("parquet null and empty text", {"a.parquet": _parquet(NULL_TEXT)}, 4, 2, {"empty": 2}),
    _case("parquet text a number", {"a.parquet": _parquet(pa.table({"text": [3, 4]}))}, 2, 0,
          {"bad_text": 2}),
    _case("parquet truncated (ArrowInvalid)",
          {"a.parquet": _parquet(FIFTY, row_group_size=10)[:900], "b.jsonl": _jsonl(_texts(2))}, 3, 2,
          {"broken_parquet": 1}),
    _case("parquet without a text column", {"a.parquet": _parquet(NO_TEXT)}, 5, 0, {"no_text_column": 5}),
]
# fmt: on


def _snapshot(root: Path, skip: Path) -> dict[str, str]:
    """Every file under `root` outside `skip`, with its hash: inputs untouched, nothing written beside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and skip not in p.parents
    }


def _run_clean(tmp_path: Path, files: dict[str, bytes], extra: list[str]) -> tuple[Path, dict]:
    for name, data in files.items():
        (tmp_path / "in" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    # `../../x` from the output still lands inside tmp_path, where the snapshot sees it
    out = tmp_path / "deep" / "er" / "out"
    before = _snapshot(tmp_path, out)
    proc = run_cli(
        "clean", "--input", str(tmp_path / "in"), "--output", str(out), *CLEAN, *extra, check=False
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _snapshot(tmp_path, out) == before, "written outside the output folder, or an input changed"
    funnel = json.loads((out / "report" / "funnel.json").read_text(encoding="utf-8"))
    for row in funnel["steps"]:
        assert row["docs_in"] == row["kept"] + row["removed_total"], row
    shards = [p for p in out.rglob("*.parquet") if "report" not in p.relative_to(out).parts]
    assert sum(pq.read_metadata(p).num_rows for p in shards) == funnel["steps"][-1]["kept"]
    return out, funnel


@pytest.mark.parametrize("files, docs_in, kept, removed", CLEAN_CASES)
def test_clean_counts_every_record_of_a_hostile_input(tmp_path, files, docs_in, kept, removed):
    _, funnel = _run_clean(tmp_path, files, [])
    read = funnel["steps"][0]
    assert (read["docs_in"], read["kept"]) == (docs_in, kept), read
    assert read["removed"] == removed, read


def _writer_stats(out: Path) -> dict[str, int]:
    """The writer's counts summed over the tasks (the last step of each task's stats file)."""
    counts: dict[str, int] = {}
    for f in sorted((out / "report" / "logs" / "stats").glob("*.json")):
        for key, value in json.loads(f.read_text())[-1]["stats"].items():
            counts[key] = counts.get(key, 0) + int(value["total"] if isinstance(value, dict) else value)
    return counts


def _writer_case(description: str, files: dict[str, bytes], folders: set[str], rerouted: dict, *extra: str):
    """A probe: the input files, the shard folders expected, the writer's `rerouted_*` counts."""
    return pytest.param(files, list(extra), folders, rerouted, id=description)


# fmt: off
WRITER_CASES = [
    # records carrying `rank`: two tasks once wrote one und/000_7.parquet, and half the documents were lost
    _writer_case("records carrying rank",
                 {"a.jsonl": _jsonl(_texts(5, rank="7")), "b.jsonl": _jsonl(_texts(5, rank="7"))},
                 {"und"}, {}, "--tasks", "2"),
    _writer_case("route and lang that climb out",
                 {"a.jsonl": _jsonl(_texts(3, route="../../x", lang="../../y"))},
                 {"und"}, {"rerouted_unsafe_lang": 3, "rerouted_unsafe_route": 3}),
    _writer_case("lang .. and an absolute route", {"a.jsonl": _jsonl(_texts(2, lang="..", route="/tmp/x"))},
                 {"und"}, {"rerouted_unsafe_lang": 2, "rerouted_unsafe_route": 2}),
    # a plain name, but the run's own bookkeeping folder: shards there would never be read again
    _writer_case("lang report and route removed", {"a.jsonl": _jsonl(_texts(2, lang="report", route="removed"))},
                 {"und"}, {"rerouted_unsafe_lang": 2, "rerouted_unsafe_route": 2}),
    _writer_case("safe lang and route are kept", {"a.jsonl": _jsonl(_texts(2, lang="en", route="code"))},
                 {"code/en"}, {}),
]
# fmt: on


@pytest.mark.parametrize("files, extra, folders, rerouted", WRITER_CASES)
def test_record_fields_never_choose_the_shard_path(tmp_path, files, extra, folders, rerouted):
    out, funnel = _run_clean(tmp_path, files, extra)
    n = funnel["steps"][0]["docs_in"]
    shards = [p for p in out.rglob("*.parquet") if "report" not in p.relative_to(out).parts]
    assert {str(p.parent.relative_to(out)) for p in shards} == folders
    assert sum(pq.read_metadata(p).num_rows for p in shards) == n == funnel["steps"][-1]["kept"]
    written = _writer_stats(out)
    assert {k: v for k, v in written.items() if k.startswith("rerouted_")} == rerouted
    if "und" in folders:  # the lang column agrees with the folder
        assert set(pq.read_table(shards, columns=["lang"]).column("lang").to_pylist()) == {"und"}


@pytest.fixture(scope="module")
def tokenizer() -> Path:
    return llama3_tokenizer()  # a real tokenizer.json; its EOS is <|end_of_text|>


def _shard(path: Path, rows: list[dict]) -> None:
    """A clean shard as `clean` writes it: rows of (text, metadata fields)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [
        {
            "id": str(i),
            "text": r["text"],
            "url": None,
            "lang": "en",
            "lang_score": None,
            "source": "t",
            "metadata": {**{f.name: None for f in METADATA_FIELDS}, **r.get("metadata", {})},
        }
        for i, r in enumerate(rows)
    ]
    pq.write_table(pa.Table.from_pylist(full, schema=CLEAN_SCHEMA), path)


def _tokenize(tmp_path: Path, tokenizer: Path, *extra: str):
    out = tmp_path / "deep" / "er" / "tokens"
    before = _snapshot(tmp_path, out)
    proc = run_cli("tokenize", "--input", str(tmp_path / "in"), "--tokenizer", str(tokenizer), "--eos",
                   "<|end_of_text|>", "--output", str(out), "--no-progress", *extra, check=False)  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _snapshot(tmp_path, out) == before, "written outside the output folder, or an input changed"
    return out, proc


TOPICS = ["../../x", "..", "report", "Sci/Tech", "math", "数学"]


def test_split_by_values_become_safe_folders_inside_the_output(tmp_path, tokenizer):
    text = "The quick brown fox jumps over the lazy dog."
    _shard(tmp_path / "in" / "en" / "a.parquet", [{"text": text, "metadata": {"topic": t}} for t in TOPICS])
    out, proc = _tokenize(tmp_path, tokenizer, "--split-by", "topic")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labelled = {}
    for manifest in out.glob("*/tokens.json"):
        m = json.loads(manifest.read_text())
        labelled[m["labels"]["topic"]] = (manifest.parent.name, m["documents"])
    assert labelled == {
        "../../x": ("%2E%2E%2F%2E%2E%2Fx", 1),
        "..": ("%2E%2E", 1),
        "report": ("%72eport", 1),  # not the run's own report/ folder
        "Sci/Tech": ("Sci%2FTech", 1),
        "math": ("math", 1),  # plain names as they are, in any script
        "数学": ("数学", 1),
    }
    assert not (out / "report" / "tokens.json").exists()


def _no_text_column(tmp_path: Path) -> None:
    (tmp_path / "in" / "en").mkdir(parents=True)
    pq.write_table(NO_TEXT, tmp_path / "in" / "en" / "a.parquet")


def _empty_texts(tmp_path: Path) -> None:
    _shard(tmp_path / "in" / "en" / "a.parquet", [{"text": ""}, {"text": ""}])


def _blank_texts(tmp_path: Path) -> None:  # past the Parquet statistics: only the tokenize run sees it
    _shard(tmp_path / "in" / "en" / "a.parquet", [{"text": "   "}, {"text": "\n\t"}])


# (description, how the input is made, the expected substring of the one `error:` line)
TOKENIZE_REFUSALS = [
    pytest.param(lambda tmp: (tmp / "in").mkdir(), "no Parquet shards", id="an empty folder"),
    pytest.param(_no_text_column, "no `text` column", id="Parquet without a text column"),
    pytest.param(_empty_texts, "no documents to tokenize", id="every text empty"),
    pytest.param(_blank_texts, "no documents tokenized", id="every text blank"),
]


@pytest.mark.parametrize("make, expected", TOKENIZE_REFUSALS)
def test_tokenize_refuses_an_input_without_documents(tmp_path, tokenizer, make, expected):
    make(tmp_path)
    out, proc = _tokenize(tmp_path, tokenizer)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0] and str(tmp_path / "in") in errors[0], errors[0]
    if expected != "no documents tokenized":  # found by the run itself: its (empty) tokens.json stays
        assert not (out / "tokens.json").exists()


BAD_UTF8 = b"\xed\xa0\x80"  # a UTF-16 surrogate encoded as UTF-8: not UTF-8, and Arrow does not check


def _with_bad_utf8(table: pa.Table, row: int) -> pa.Table:
    """`table` with row `row` of its text column holding BAD_UTF8 (written as a string column)."""
    texts = [t.encode() for t in table.column("text").to_pylist()]
    texts[row] = texts[row][:20] + BAD_UTF8 + texts[row][20:]
    column = pa.array(texts, pa.binary()).view(pa.string())
    return table.set_column(table.schema.get_field_index("text"), "text", column)


def test_invalid_utf8_in_a_parquet_text_is_repaired_and_counted_and_the_shard_kept(tmp_path, tokenizer):
    """clean reads it with U+FFFD for the bad bytes, counts it under the read step's `repaired_utf8`,
    and keeps every row; tokenize reads a shard holding such a value and tokenizes all its documents."""
    table = _with_bad_utf8(pa.Table.from_pylist(_texts(5)), 2)
    out, funnel = _run_clean(tmp_path / "clean", {"a.parquet": _parquet(table)}, [])
    read = funnel["steps"][0]
    assert (read["docs_in"], read["kept"], read["removed"]) == (5, 5, {}), read
    assert read["counters"] == {"repaired_utf8": 1}, read
    shards = [p for p in out.rglob("*.parquet") if "report" not in p.relative_to(out).parts]
    texts = [t for p in shards for t in pq.read_table(p, columns=["text"]).column("text").to_pylist()]
    assert sum("\ufffd" in t for t in texts) == 1 and len(texts) == 5

    rows = [{"text": r["text"]} for r in _texts(4)]
    _shard(tmp_path / "in" / "en" / "a.parquet", rows)
    path = tmp_path / "in" / "en" / "a.parquet"
    pq.write_table(_with_bad_utf8(pq.read_table(path), 1), path)
    tokens, proc = _tokenize(tmp_path, tokenizer)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tokens / "tokens.json").read_text())["documents"] == 4

    # cpt-tok train's reader: the shard and a text file with a bad line, each value counted once
    from cpt.tok.train import iter_texts

    (tmp_path / "in" / "en" / "b.txt").write_bytes(b"a good line\nbad " + BAD_UTF8 + b" line\n")
    counts: dict = {}
    texts = list(iter_texts(tmp_path / "in" / "en", counts))
    assert len(texts) == 6 and sum("\ufffd" in t for t in texts) == 2 and counts == {"repaired_utf8": 2}


def test_the_size_cap_holds_for_every_input_kind_as_it_is_read(tmp_path):
    """extract.max_chars, before any work: a jsonl or Parquet text over it is `too_large` at the read
    step (a jsonl line too long to hold such a text is skipped without being read whole), as an HTML page
    over it is at the extract step."""
    long_text = "word " * 400  # 2,000 characters
    files = {
        "a.jsonl": _jsonl([*_texts(2), {"text": long_text}, {"text": "x" * 1_300_000}, *_texts(1)]),
        "b.parquet": _parquet(pa.Table.from_pylist([*_texts(2), {"text": long_text}])),
    }
    _, funnel = _run_clean(tmp_path, files, ["--set", "extract.max_chars=1000"])
    read = funnel["steps"][0]
    assert (read["docs_in"], read["kept"], read["removed"]) == (8, 5, {"too_large": 3}), read


def test_plain_text_is_read_a_document_a_line_or_a_block_and_its_source_is_the_file_stem(tmp_path):
    """`.txt` input: one document a line by default (blank lines are no documents), or blank-line blocks
    with `--set read.txt=blocks`; a line of invalid UTF-8 is kept with U+FFFD and counted; the source
    column is the file's stem, the funnel counts each file apart."""
    text = (
        b"first document\n\nsecond document, line one\nsecond document, line two\n\nbad \xed\xa0\x80 bytes\n"
    )
    files = {"news.txt": text, "wiki/other.txt": b"another file\n"}
    for mode, expected in (("lines", 5), ("blocks", 4)):
        out, funnel = _run_clean(tmp_path / mode, files, ["--set", f"read.txt={mode}"])
        read = funnel["steps"][0]
        assert (read["docs_in"], read["kept"]) == (expected, expected), read
        assert read["counters"] == {"repaired_utf8": 1}, read
        rows = pq.read_table(sorted(out.rglob("*.parquet"))).to_pylist()
        texts = {r["text"]: r["source"] for r in rows}
        assert texts["another file"] == "other" and texts["first document"] == "news"
        if mode == "blocks":
            assert "second document, line one\nsecond document, line two" in texts
        assert (
            funnel["by_input"]["news.txt"]["read"] == expected - 1
            and funnel["by_input"]["wiki/other.txt"]["read"] == 1
        )


def test_cpt_tok_train_reads_a_glob(tmp_path):
    from cpt.tok.train import TokenizerError, iter_texts

    for lang, text in (("a/zh", "中文"), ("b/zh", "更多"), ("b/en", "english")):
        (tmp_path / lang).mkdir(parents=True)
        (tmp_path / lang / "x.txt").write_text(text + "\n", encoding="utf-8")
    assert sorted(iter_texts(f"{tmp_path}/*/zh/*.txt")) == ["中文", "更多"]
    with pytest.raises(TokenizerError, match="no .parquet, .txt or .utf8 files match it"):
        list(iter_texts(f"{tmp_path}/*/fr/*.txt"))


def test_several_inputs_and_globs_are_one_run(tmp_path):
    """`--input` takes several folders, files and globs (repeated or after one flag): one run over all
    their files, each named in the funnel relative to their common folder; a file two of them name is read once."""
    (tmp_path / "news").mkdir()
    (tmp_path / "news" / "a.txt").write_text("新闻一\n新闻二\n", encoding="utf-8")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "b.jsonl").write_bytes(_jsonl(_texts(2)))
    out = tmp_path / "out"
    proc = run_cli("clean", "--input", str(tmp_path / "news"), str(tmp_path / "web" / "b.jsonl"), "--input",
                   f"{tmp_path}/news/*.txt", "--output", str(out), *CLEAN)  # fmt: skip
    funnel = json.loads((out / "report" / "funnel.json").read_text(encoding="utf-8"))
    assert {name: counts["read"] for name, counts in funnel["by_input"].items()} == {
        "news/a.txt": 2,
        "web/b.jsonl": 2,
    }
    assert funnel["steps"][-1]["kept"] == 4 and "by input file" in proc.stdout
