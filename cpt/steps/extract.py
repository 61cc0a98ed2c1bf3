"""HTML -> main text, with trafilatura (default, as FineWeb) or resiliparse.

Both run in datatrove's extractor sandbox (a child process with a per-document timeout, so a
pathological page cannot hang or OOM a task). Documents that are already plain text (WET
conversions, jsonl, parquet) pass through untouched and are counted as kept.
"""

from __future__ import annotations

from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor, ExtractorSandbox
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints

from cpt.steps.read import FORMAT_KEY, TEXT


class _PassTextThrough:
    """Mixin for a BaseExtractor: extract HTML documents, forward plain-text ones as they are.

    Removal reasons: `empty_extraction` (nothing left after boilerplate removal), `timeout`,
    `extractor_crashed`, `extractor_error`.
    """

    def run(self, data, rank: int = 0, world_size: int = 1):
        with ExtractorSandbox(timeout=self.timeout, warmup_text="") as sandbox:
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
                    except Exception as e:  # noqa: BLE001 - a page that breaks the extractor is dropped
                        reason = "extractor_error"
                        logger.debug(f"extraction failed for {doc.id}: {e}")
                    if reason is None and not doc.text.strip():
                        reason = "empty_extraction"
                if reason:
                    self.stat_update(StatHints.dropped, f"dropped_{reason}")
                    continue
                doc.metadata[FORMAT_KEY] = TEXT
                self.stat_update(StatHints.forwarded)
                self.update_doc_stats(doc)
                yield doc


class TrafilaturaExtractor(_PassTextThrough, Trafilatura):
    """datatrove's Trafilatura (favour_precision as FineWeb), plain text out, no markdown."""

    name = "⛏ Trafilatura (cpt)"

    def __init__(
        self,
        favour_precision: bool = True,
        timeout: float = 1.0,
        deduplicate: bool = True,
        include_tables: bool = False,
    ):
        super().__init__(
            favour_precision=favour_precision,
            timeout=timeout,
            deduplicate=deduplicate,
            include_tables=include_tables,  # tables come out as `|`-separated cells, a markdown-like form
            include_formatting=False,  # no markdown emphasis in the training text
            include_links=False,
            output_format="txt",
        )


class ResiliparseExtractor(_PassTextThrough, BaseExtractor):
    """resiliparse's main-content extraction (datatrove 0.10.1 ships no resiliparse extractor)."""

    name = "⛏ Resiliparse"
    _requires_dependencies = ["resiliparse"]

    def __init__(self, timeout: float = 1.0, main_content: bool = True):
        super().__init__(timeout)
        self.main_content = main_content

    def extract(self, text: str) -> str:
        from resiliparse.extract.html2text import extract_plain_text

        return extract_plain_text(
            text,
            main_content=self.main_content,
            alt_texts=False,
            links=False,
            list_bullets=False,  # no markdown-like bullets
            noscript=False,
            form_fields=False,
        )


def make_extractor(
    backend: str, timeout: float, favour_precision: bool = True, include_tables: bool = False
) -> BaseExtractor:
    if backend == "resiliparse":
        return ResiliparseExtractor(timeout=timeout)
    return TrafilaturaExtractor(
        favour_precision=favour_precision, timeout=timeout, include_tables=include_tables
    )
