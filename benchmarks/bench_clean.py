"""Throughput of `clean` per core, against the same steps assembled directly from datatrove.

    python benchmarks/bench_clean.py [--articles 200] [--repeats 3] [--json OUT]

Both pipelines run in this process as one datatrove task (one core; the extractor's sandbox child
works while its parent waits), on the same files, alternating, best of `--repeats`. Figures are
documents per second: the HTML responses in the input (as cpt's reader counts them) over each
side's wall time, so the ratio is the ratio of times on the same input. Also measured: trafilatura vs resiliparse on the same pages, in-process,
and the extract step as it is against the step before issue 14 (a 1 s wall-clock deadline per page in
datatrove's sandbox), alone and in the default pipeline, in the same run.

Plain datatrove differs from cpt where cpt has to: its URL filter's tldextract is put offline and its
language filter pointed at the local lid.176 file (as cpt does), and its quality filters use English
word splitting for every language (cpt splits Chinese with jieba, which costs time and is right).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpt.demo.sample_warc import write_sample_warc  # noqa: E402

SHARED_WARC = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "warc"


def cut_before_broken_tail(path: Path) -> None:
    """Drop the planted broken header and what follows: plain datatrove's reader stops the task there."""
    from warcio.archiveiterator import ArchiveIterator

    with path.open("rb") as f:
        records = ArchiveIterator(f)
        for record in records:
            if not record.rec_type:
                cut = records.offset
                break
        else:
            return
        f.seek(0)
        head = f.read(cut)
    path.write_bytes(head)


def plain_datatrove_pipeline(input_dir: Path, output_dir: Path) -> list:
    """FineWeb's steps from datatrove alone: no cpt class involved."""
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
        URLFilter,
    )
    from datatrove.pipeline.formatters import PIIFormatter
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers import ParquetWriter
    from tldextract import TLDExtract

    from cpt.steps.langid import lid176_model_path

    url_filter = URLFilter()
    url_filter.tldextractor = TLDExtract(suffix_list_urls=())
    lang = LanguageFilter(languages=["en", "zh"])
    lang.model.MODEL_URL = lid176_model_path()
    return [
        WarcReader(str(input_dir), glob_pattern="*.warc.gz"),
        url_filter,
        Trafilatura(favour_precision=True),
        lang,
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        C4QualityFilter(filter_no_terminal_punct=False),
        FineWebQualityFilter(),
        PIIFormatter(),
        ParquetWriter(str(output_dir), output_filename="${language}/${rank}.parquet", compression="zstd"),
    ]


def run_plain(input_dir: Path, work: Path) -> tuple[float, int]:
    from datatrove.executor import LocalPipelineExecutor

    out = work / "plain"
    shutil.rmtree(out, ignore_errors=True)
    executor = LocalPipelineExecutor(
        plain_datatrove_pipeline(input_dir, out / "data"), tasks=1, workers=1, logging_dir=str(out / "logs")
    )
    start = time.perf_counter()
    stats = executor.run()
    elapsed = time.perf_counter() - start
    return elapsed, int(stats.stats[0].stats["documents"].total)


def kept_by_language(data_dir: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    langs = sorted(p for p in data_dir.iterdir() if p.is_dir() and p.name != "report")
    return {p.name: sum(pq.ParquetFile(f).metadata.num_rows for f in p.glob("*.parquet")) for p in langs}


class WallClockTrafilatura:
    """The extract step as it was before issue 14, for the before/after figure: datatrove's
    ExtractorSandbox with a 1 s wall-clock deadline per page (and on the child's start-up), and
    trafilatura's duplicate cache kept across pages."""

    @staticmethod
    def make():
        from datatrove.pipeline.extractors.base import ExtractorSandbox
        from datatrove.utils.typeshelper import StatHints

        from cpt.steps.extract import TrafilaturaExtractor
        from cpt.steps.read import FORMAT_KEY, TEXT

        class Before(TrafilaturaExtractor):
            def run(self, data, rank: int = 0, world_size: int = 1):
                with ExtractorSandbox(timeout=1.0, warmup_text="") as sandbox:
                    for doc in data:
                        self.stat_update(StatHints.total)
                        if doc.metadata.get(FORMAT_KEY) == TEXT:
                            self.stat_update(StatHints.forwarded)
                            yield doc
                            continue
                        with self.track_time():
                            reason = None
                            try:
                                doc.text = sandbox.process_document(doc.text, self.extract) or ""
                            except TimeoutError:
                                reason = "timeout"
                            except EOFError:
                                reason = "extractor_crashed"
                            except Exception:  # noqa: BLE001
                                reason = "extractor_error"
                            if reason is None and not doc.text.strip():
                                reason = "empty_extraction"
                        if reason:
                            self.stat_update(StatHints.dropped, f"dropped_{reason}")
                            continue
                        doc.metadata[FORMAT_KEY] = TEXT
                        self.stat_update(StatHints.forwarded)
                        self.update_doc_stats(doc)
                        yield doc

        return Before()


def run_cpt(
    input_dir: Path, work: Path, steps: list[str] | None, name: str, before: bool = False
) -> tuple[float, int]:
    from pipelines.clean import executor, funnel_of, load_config, prepare

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    run = prepare(str(input_dir), out, load_config(), steps=steps, tasks=1, progress=False)
    if before:
        i = run.labels.index("extract")
        run.pipeline[i] = WallClockTrafilatura.make()
    launcher = executor(run, "local", workers=1)
    start = time.perf_counter()
    launcher.run()
    elapsed = time.perf_counter() - start
    return elapsed, funnel_of(out).rows[0].kept


def extraction_speed(input_dir: Path, limit: int = 400) -> dict:
    """trafilatura vs resiliparse, in-process on the same HTML pages."""
    from cpt.steps.extract import ResiliparseExtractor, TrafilaturaExtractor
    from cpt.steps.read import RobustWarcReader

    pages = [d.text for d in RobustWarcReader(str(input_dir)).run() if d.metadata["format"] == "html"][:limit]
    mb = sum(len(p.encode()) for p in pages) / 2**20
    result = {"pages": len(pages), "html_mb": round(mb, 2)}
    for name, extractor in [("trafilatura", TrafilaturaExtractor()), ("resiliparse", ResiliparseExtractor())]:
        extractor.extract(pages[0])  # warm-up: imports
        start = time.perf_counter()
        chars = sum(len(extractor.extract(p) or "") for p in pages)
        elapsed = time.perf_counter() - start
        result[name] = {
            "pages_per_s": round(len(pages) / elapsed, 1),
            "mb_per_s": round(mb / elapsed, 2),
            "chars_out": chars,
        }
    result["resiliparse_over_trafilatura"] = round(
        result["resiliparse"]["pages_per_s"] / result["trafilatura"]["pages_per_s"], 2
    )
    return result


def sandbox_cost(input_dir: Path, repeats: int) -> dict:
    """The same pages through cpt's ExtractionSandbox (CPU-time limit, per-page cache reset) and through
    datatrove's ExtractorSandbox (the step before issue 14), in-process, alternating, best of `repeats`."""
    from datatrove.pipeline.extractors.base import ExtractorSandbox

    from cpt.steps.extract import ExtractionSandbox, TrafilaturaExtractor
    from cpt.steps.read import RobustWarcReader

    pages = [d.text for d in RobustWarcReader(str(input_dir)).run() if d.metadata["format"] == "html"]
    step = TrafilaturaExtractor()
    now, before = [], []
    for _ in range(repeats):
        with ExtractionSandbox(step._extract_page) as sandbox:
            sandbox.extract("<html></html>")  # start-up outside the timing
            start = time.perf_counter()
            for page in pages:
                sandbox.extract(page)
            now.append(time.perf_counter() - start)
        with ExtractorSandbox(timeout=60, warmup_text="") as sandbox:  # 60 s: no page times out here
            sandbox.process_document("<html></html>", step.extract)
            start = time.perf_counter()
            for page in pages:
                sandbox.process_document(page, step.extract)
            before.append(time.perf_counter() - start)
    return {
        "pages": len(pages),
        "pages_per_s": round(len(pages) / min(now), 1),
        "pages_per_s_before_issue_14": round(len(pages) / min(before), 1),
        "now_over_before": round(min(before) / min(now), 3),
    }


def bench_corpus(label: str, input_dir: Path, work: Path, repeats: int) -> dict:
    plain, same, full, before, extract_now, extract_before = [], [], [], [], [], []
    same_steps = ["url_filter", "extract", "langid", "heuristics", "pii"]  # plain datatrove's set
    for _ in range(repeats):
        t, plain_docs = run_plain(input_dir, work)
        plain.append(t)
        t, docs = run_cpt(input_dir, work, same_steps, "cpt_same")
        same.append(t)
        t, _ = run_cpt(input_dir, work, None, "cpt_full")
        full.append(t)
        t, _ = run_cpt(input_dir, work, None, "cpt_full_before", before=True)
        before.append(t)
        t, _ = run_cpt(input_dir, work, ["extract"], "extract_now")
        extract_now.append(t)
        t, _ = run_cpt(input_dir, work, ["extract"], "extract_before", before=True)
        extract_before.append(t)
    # both consume the same input: rates divide the same count (the HTML responses cpt's reader finds;
    # datatrove's reader also passes non-200 pages on) by each side's best wall time
    rate = {
        "datatrove": round(docs / min(plain), 1),
        "cpt_same_steps": round(docs / min(same), 1),
        "cpt_default": round(docs / min(full), 1),
    }
    rate["cpt_default_before_issue_14"] = round(docs / min(before), 1)
    rate["extract_alone"] = round(docs / min(extract_now), 1)
    rate["extract_alone_before_issue_14"] = round(docs / min(extract_before), 1)
    return {
        "corpus": label,
        # the extraction change on a quiet machine: >1 is faster now. The default pipeline keeps pages the
        # wall-clock limit and trafilatura's cross-page cache dropped, and filters them further downstream
        "default_now_over_before": round(min(before) / min(full), 3),
        "extract_now_over_before": round(min(extract_before) / min(extract_now), 3),
        "extract_kept": {
            "now": kept_by_language(work / "extract_now"),
            "before": kept_by_language(work / "extract_before"),
        },
        "html_documents": {"datatrove_reader": plain_docs, "cpt_reader": docs},
        "docs_per_s_per_core": rate,
        "cpt_over_datatrove": round(rate["cpt_same_steps"] / rate["datatrove"], 2),
        "seconds_best": {
            "datatrove": round(min(plain), 2),
            "cpt_same_steps": round(min(same), 2),
            "cpt_default": round(min(full), 2),
            "cpt_default_before_issue_14": round(min(before), 2),
            "extract_alone": round(min(extract_now), 2),
            "extract_alone_before_issue_14": round(min(extract_before), 2),
        },
        "kept_by_language": {
            "datatrove": kept_by_language(work / "plain" / "data"),
            "cpt_same_steps": kept_by_language(work / "cpt_same"),
            "cpt_default": kept_by_language(work / "cpt_full"),
            "cpt_default_before_issue_14": kept_by_language(work / "cpt_full_before"),
        },
        "extraction": extraction_speed(input_dir),
        "sandbox": sandbox_cost(input_dir, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--articles", type=int, default=200, help="articles per language in the generated WARC"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    results = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}"
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generated = work / "generated"
        write_sample_warc(generated / "sample.warc.gz", seed=0, n_articles=args.articles, large_page_mb=2.0)
        cut_before_broken_tail(generated / "sample.warc.gz")
        results["generated"] = bench_corpus("generated", generated, work, args.repeats)
        if SHARED_WARC.is_dir():
            real = work / "real"
            real.mkdir()
            for f in SHARED_WARC.glob("*.warc.gz"):
                (real / f.name).symlink_to(f)
            results["real"] = bench_corpus("real (shared/data/warc)", real, work, args.repeats)
        else:
            print(f"note: {SHARED_WARC} not found, real-WARC figures skipped", file=sys.stderr)
    results["ratios"] = [
        {
            "figure": f"clean docs/s per core, {r['corpus']} corpus",
            "cpt": r["docs_per_s_per_core"]["cpt_same_steps"],
            "reference": r["docs_per_s_per_core"]["datatrove"],
            "reference_name": "the same steps in plain datatrove",
            "ratio": r["cpt_over_datatrove"],
            "goal": 1.0,
            "command": "python benchmarks/bench_clean.py",
        }
        for r in (results[k] for k in ("generated", "real") if k in results)
    ]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
