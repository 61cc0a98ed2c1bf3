"""Unit tests of the datatrove steps cpt adds or configures, on small inline and real text."""

from __future__ import annotations

import pyarrow.parquet as pq
from datatrove.data import Document
from datatrove.utils.text import split_into_sentences, split_into_words

from conftest import chinese_paragraphs, data_path
from cpt.shards import CLEAN_SCHEMA
from cpt.steps.dirty_words import DirtyWordsFilter, default_lists
from cpt.steps.heuristics import JiebaTokenizer, PerLanguageFilter
from cpt.steps.langid import LanguageID
from cpt.steps.pii import PIIRedactor
from cpt.steps.write import ShardWriter
from pipelines.clean import DEFAULT_CONFIG, load_config
from texts import EN_ARTICLE, ZH_ARTICLE


def doc(text: str, lang: str | None = None, **meta) -> Document:
    metadata = {"lang": lang, **meta} if lang else dict(meta)
    return Document(text=text, id="t", metadata=metadata)


def test_langid_predicts_offline_with_numpy2_fasttext():
    lid = LanguageID(["en", "zh"], min_score=0.65)
    zh, en = doc(ZH_ARTICLE), doc(EN_ARTICLE)
    assert lid.filter(zh) is True and zh.metadata["lang"] == "zh" and zh.metadata["lang_score"] > 0.9
    assert lid.filter(en) is True and en.metadata["lang"] == "en"
    de = doc("Der Bahnhof der kleinen Stadt wurde im letzten Jahr renoviert und ist jetzt barrierefrei.")
    assert lid.filter(de) == (False, "lang_not_kept") and de.metadata["lang"] == "de"


def test_chinese_is_split_into_words_not_judged_as_one_giant_word():
    words = split_into_words(ZH_ARTICLE, JiebaTokenizer())
    assert len(words) > 150  # jieba segmentation; a whitespace split gives 10 "words"
    assert max(len(w) for w in words) <= 6
    assert len(split_into_sentences(ZH_ARTICLE.replace("\n", ""), JiebaTokenizer())) == 10


def test_jieba_tokenizer_matches_datatrove_spacy_jieba_on_real_text():
    lines = chinese_paragraphs()
    tok = JiebaTokenizer()
    for i in range(0, 200, 20):
        page = "\n".join(lines[i : i + 20])
        assert tok.word_tokenize(page) == split_into_words(page, "cmn")
    # spaCy's sentencizer also ends a sentence at the dot of a file name ("sources.list"): prose without one
    prose = [line for line in lines if "." not in line]
    for i in range(0, 200, 20):
        page = "\n".join(prose[i : i + 20])
        # spaCy's sentencizer differs on brackets after a full stop ("。（" ends its sentence with the "（")
        spacy_count, jieba_count = (
            len(split_into_sentences(page, "cmn")),
            len(split_into_sentences(page, tok)),
        )
        assert abs(spacy_count - jieba_count) <= max(1, spacy_count // 20)


def test_english_words_through_the_chunk_cache_are_datatrove_spacy_words_on_raw_text():
    """The quality filters split raw page text (newlines, runs of spaces, tabs, Unicode spaces): the
    chunk cache must give spaCy's words for it, not only for MinHash's simplified text."""
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from cpt.steps.heuristics import ChunkedWordTokenizer, ChunkWords

    raw = data_path("english-text", "1342-0.txt").read_text(encoding="utf-8")
    pages = [raw[i : i + 6000] for i in range(0, 120_000, 6000)]
    pages += [
        EN_ARTICLE,
        "a  b\n\n c\t\td \u00a0e\u3000f  ",
        "  leading and trailing \n",
        "",
        " \n\t ",
        "Mr. Darcy's U.S.-made (\"odd\") e-mail:\n x@y.org,\r\n 3.5% -- don't!",
        "end.\n Next",
    ]
    spacy = load_word_tokenizer("en")
    fast = ChunkedWordTokenizer("en")
    small = ChunkWords(spacy, max_chunks=300)  # the cache starts over many times
    for page in pages:
        words = spacy.word_tokenize(page)
        assert fast.word_tokenize(page) == words, page[:80]
        assert fast.word_tokenize(page) == words  # the words kept from the call before
        assert small(page) == words, page[:80]
    assert fast.sent_tokenize(EN_ARTICLE) == spacy.sent_tokenize(EN_ARTICLE)
    # spaCy fails on this string after its first sight (datatrove then drops it): dropped every time
    assert ChunkWords(spacy)("IS_ALPHA word") == ChunkWords(spacy)("IS_ALPHA word") == ["word"]


def test_chinese_article_passes_zh_heuristics_but_english_defaults_would_drop_it():
    cfg = load_config(DEFAULT_CONFIG)
    for kind in ("gopher_repetition", "gopher_quality", "c4_quality", "fineweb_quality"):
        spec = {k: v for k, v in cfg.heuristics[kind].items() if k != "enabled"}
        f = PerLanguageFilter(kind, kind, spec, ["en", "zh"])
        assert f.filter(doc(ZH_ARTICLE, "zh")) is True, kind
        assert f.filter(doc(EN_ARTICLE, "en")) is True, kind
    # the same Chinese page judged as English: Gopher's stop-word and word-length rules drop it
    english_rules = PerLanguageFilter("gq", "gopher_quality", {}, ["en"])
    assert english_rules.filter(doc(ZH_ARTICLE, "en"))[0] is False


def _kept(filters, text: str, lang: str) -> bool | str:
    """True when every filter keeps the document, else the first removal's `filter: reason`."""
    d = doc(text, lang)
    for label, f in filters:
        result = f.filter(d)
        if result is not True:
            return f"{label}: {result[1]}"
    return True


def test_real_chinese_articles_pass_the_default_heuristics_on_one_line_or_many_and_spam_does_not():
    """Articles of ~1,500 characters of real Chinese prose (the Debian handbook, paragraph after
    paragraph), held on one line as Chinese corpora hold them or a paragraph a line as web text comes:
    the default filters keep >= 95% of each shape; the articles made only of paragraphs without a space
    (pure Chinese, as news is) are all kept on one line, where C4's 1,000-character "word" dropped every
    one. Spam repeated on one line or on many is still removed."""
    from pipelines.clean import heuristic_filters

    filters = heuristic_filters(load_config(DEFAULT_CONFIG))
    paragraphs = chinese_paragraphs()

    def articles(paras: list[str]) -> list[list[str]]:
        groups, current = [], []
        for p in paras:
            current.append(p)
            if sum(map(len, current)) >= 1500 and p.endswith(("。", "！", "？", "）")):
                groups.append(current)
                current = []
        return groups

    mixed, pure = articles(paragraphs), articles([p for p in paragraphs if " " not in p])
    assert len(mixed) >= 80 and len(pure) >= 8
    for shape, sep in (("one line", ""), ("paragraphs", "\n")):
        verdicts = [_kept(filters, sep.join(a), "zh") for a in mixed]
        assert sum(v is True for v in verdicts) >= 0.95 * len(mixed), (
            shape,
            [v for v in verdicts if v is not True],
        )
    assert [_kept(filters, "".join(a), "zh") for a in pure] == [True] * len(pure)

    sentence = "免费领取优惠券，点击这里马上注册，名额有限先到先得。"
    for spam in (sentence * 30, "\n".join([sentence] * 30)):
        assert _kept(filters, spam, "zh") is not True


def test_dirty_words_share_threshold_en_and_zh():
    f = DirtyWordsFilter(default_lists(), max_share=0.01)
    clean = doc(EN_ARTICLE, "en")
    assert f.filter(clean) is True and clean.metadata["dirty_word_share"] == 0
    en_words = default_lists()["en"]
    word = next(w for w in open(en_words, encoding="utf-8").read().split("\n") if w.isalpha() and len(w) > 4)
    dirty = doc(" ".join([word] * 20 + ["and", "then", "some", "ordinary", "words"]), "en")
    assert f.filter(dirty) == (False, "dirty_words")
    zh_word = next(w for w in open(default_lists()["zh"], encoding="utf-8").read().split("\n") if len(w) >= 2)
    zh_dirty = doc(ZH_ARTICLE + zh_word * 40, "zh")
    assert f.filter(zh_dirty) == (False, "dirty_words")
    # a word inside a longer English word is not a match
    assert f.filter(doc("Scunthorpe " * 10, "en")) is True


def test_pii_redacts_emails_public_ips_and_phone_numbers():
    text = (
        "Write to john.smith@example.org or call (415) 555-0134, +1 415-555-0199, +44 20 7946 0958. "
        "服务器 8.8.4.4，手机 13812345678 或 +86 138 1234 5678，座机 010-62345678、021-5888 6666。"
        "Founded in 1998, room 2020-2021, internal host 192.168.10.25."
    )
    step = PIIRedactor()
    (out,) = list(step.run([doc(text, "en")]))
    for secret in [
        "john.smith@example.org",
        "555-0134",
        "555-0199",
        "7946 0958",
        "8.8.4.4",
        "13812345678",
        "138 1234 5678",
        "62345678",
        "5888 6666",
    ]:
        assert secret not in out.text, secret
    assert "1998" in out.text and "2020-2021" in out.text  # years and ranges are not phone numbers
    assert "192.168.10.25" in out.text  # private address kept (FineWeb: public IPs only)
    assert out.metadata["pii_redactions"] == 9
    assert step.stats["redacted_phone"].total == 7


def test_shard_writer_routes_by_language_and_leaves_no_tmp(tmp_path):
    writer = ShardWriter(str(tmp_path), source="unit", rows_per_group=2)
    docs = [doc(EN_ARTICLE, "en", url="https://a.example/1", lang_score=0.9), doc(ZH_ARTICLE, "zh"), doc("x")]
    list(writer.run(docs))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["en/000_00000.parquet", "und/000_00000.parquet", "zh/000_00000.parquet"]
    table = pq.read_table(tmp_path / "en" / "000_00000.parquet")
    assert table.schema.equals(CLEAN_SCHEMA)
    row = table.to_pylist()[0]
    assert row["url"] == "https://a.example/1" and row["source"] == "unit" and row["lang"] == "en"
    assert (
        pq.ParquetFile(tmp_path / "en" / "000_00000.parquet").metadata.row_group(0).column(0).compression
        == "ZSTD"
    )


PAGE = """<html><head><title>Library</title></head><body>
<header><nav><a href="/">Home</a> | <a href="/news">News</a> | <a href="/about">About us</a></nav></header>
<article><h1>The village library reopened</h1>{}</article>
<footer>Copyright 2024 Village Times. Privacy policy. This site uses cookies.</footer></body></html>"""


def test_extractors_keep_the_article_and_drop_navigation_and_footer():
    from cpt.steps.extract import ResiliparseExtractor, TrafilaturaExtractor

    html = PAGE.format("".join(f"<p>{line}</p>" for line in EN_ARTICLE.split("\n")))
    for extractor in (TrafilaturaExtractor(), ResiliparseExtractor()):
        html_doc = doc(html, format="html")
        text_doc = doc("already plain text <b>kept as is</b>", format="text")
        out = list(extractor.run([html_doc, text_doc]))
        assert len(out) == 2, extractor.name
        assert "cycle path" in out[0].text and "village library reopened" in out[0].text.lower()
        assert "Privacy policy" not in out[0].text and "About us" not in out[0].text
        assert "<p>" not in out[0].text and "**" not in out[0].text
        assert out[1].text == "already plain text <b>kept as is</b>"
        assert extractor.stats["forwarded"].total == 2


def test_a_page_the_configured_extraction_empties_is_kept_through_the_fallback_and_counted():
    """A page laid out in a table (include_tables=False empties it) and one whose paragraph repeats
    (trafilatura's deduplicate empties it) come out with their text, counted as extract_fallback; with
    the fallback off they are empty_extraction, as before; a page with text does not use it."""
    from cpt.steps.extract import TrafilaturaExtractor

    cells = "".join(
        f"<tr><td>第{i}条：本办法自发布之日起施行，由市人民政府负责解释并组织实施。</td></tr>"
        for i in range(20)
    )
    table = f"<html><body><table>{cells}</table></body></html>"
    para = (
        "<p>This paragraph repeats in the page layout because the site prints its teaser twice and again "
        "at the bottom of the article body for reasons.</p>"
    )
    repeated = f"<html><body><article>{para * 4}</article></body></html>"
    article = PAGE.format("".join(f"<p>{line}</p>" for line in EN_ARTICLE.split("\n")))
    for fallback, kept in ((True, 3), (False, 1)):
        extractor = TrafilaturaExtractor(fallback=fallback)
        out = list(extractor.run([doc(h, format="html") for h in (table, repeated, article)]))
        assert len(out) == kept, fallback
        stats = {k: v.total for k, v in extractor.stats.stats.items()}
        assert stats.get("extract_fallback", 0) == (2 if fallback else 0)
        assert stats.get("dropped_empty_extraction", 0) == (0 if fallback else 2)
        if fallback:
            assert "第19条" in out[0].text and "prints its teaser twice" in out[1].text
            assert "cycle path" in out[2].text


def test_url_filter_uses_bundled_lists_offline_and_the_users_block_list(tmp_path):
    from cpt.steps.url_filter import OfflineURLFilter

    block = tmp_path / "block.txt"
    block.write_text("# mine\nspam-farm.com\nhttps://news.example/bad-page.html\n")
    f = OfflineURLFilter(str(block))
    assert f.filter(doc("x", url="https://www.spam-farm.com/a")) == (False, "domain")
    assert f.filter(doc("x", url="https://news.example/bad-page.html")) == (False, "url")
    assert f.filter(doc("x", url="https://www.free-porn-tube.com/video/1.html"))[0] is False
    assert f.filter(doc("x", url="https://news.example/good-page.html")) is True
    assert f.filter(doc("x")) is True  # jsonl input without a URL


def test_bundled_block_lists_are_read_as_datatrove_reads_them(tmp_path):
    from datatrove.pipeline.filters import URLFilter
    from datatrove.pipeline.filters.url_filter import get_list
    from tldextract import TLDExtract

    from cpt.steps.url_filter import OfflineURLFilter, read_bundled_list

    cases = {
        "plain": "a.com\nb.org\nc.net\n",
        "no_final_newline": "a.com\nb.org",
        "comments": "# header\na.com\n#b.org\nc.net\n",
        "to_strip": "a.com \n\tb.org\r\nc.net\n",
        "blank_line": "a.com\n\nb.org\n",
        "non_ascii": "bücher.de\na.com\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
        expected = get_list(str(tmp_path), name, {"extra.com"}, do_normalize=False)
        assert read_bundled_list(str(tmp_path / name), {"extra.com"}) == expected, name
    mine, theirs = OfflineURLFilter(), URLFilter()
    theirs.tldextractor = TLDExtract(suffix_list_urls=())
    mine.download_data()
    theirs.download_data()
    for key in ("block_listed_domains", "block_listed_url", "banned_words", "banned_subwords"):
        assert getattr(mine, key) == getattr(theirs, key), key
    assert len(mine.block_listed_domains) > 1_000_000


def test_a_failing_task_leaves_only_tmp_shards(tmp_path):
    import pytest

    def documents_then_crash():
        yield doc(EN_ARTICLE, "en")
        raise RuntimeError("worker died")

    writer = ShardWriter(str(tmp_path), source="unit", rows_per_group=1)
    with pytest.raises(RuntimeError):
        list(writer.run(documents_then_crash()))
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["000_00000.parquet.tmp"]


def test_datatrove_dependency_check_gives_datatrove_answers_by_name():
    """cpt asks for a step's dependency by name before datatrove's scan of every distribution: the answers
    are the scan's for installed, missing and wrongly spelled names."""
    from datatrove.utils import _import_utils

    import cpt.steps  # noqa: F401 - installs the check

    fast = _import_utils._is_distribution_available
    assert fast.by_name
    names = ["pyarrow", "tokenizers", "faust-cchardet", "fasttext-numpy2-wheel", "python-magic", "trafilatura",
             "kenlm", "no-such-distribution-xyz", "PyYAML", "Faust-cchardet", "fasttext"]  # fmt: skip
    answers = {name: fast(name) for name in names}
    assert answers == {name: fast.scan(name) for name in names}
    assert answers["pyarrow"] and answers["faust-cchardet"] and not answers["no-such-distribution-xyz"]
