"""HTML -> main text, with trafilatura (default, as FineWeb) or resiliparse, decided by the page alone.

Extraction runs in a child process so that a pathological page can neither hang nor OOM the task.
What decides a page's fate must not be the clock of a busy machine: datatrove's `ExtractorSandbox`
gives each page (and the child's start-up) a wall-clock deadline, so on a loaded machine whole
batches of ordinary pages are dropped as `timeout` and a rerun keeps other pages. Here:

- a page longer than `max_chars` characters is dropped as `too_large` before any work (deterministic:
  extraction cost grows with page size, ~1 us a character on real pages, so this bounds the CPU time
  every kept page can need far below the limit);
- the limit is the CPU time the child spends on the page (`cpu_timeout`, read from the kernel's
  accounting of the child), not wall-clock time: a page that waits for a core is not charged for it;
- the only wall-clock rule is a safety net: a child that uses no CPU at all for `stall_timeout`
  seconds (hung, not busy) is dropped as `stalled`;
- a page that times out, stalls or crashes the child is tried once more in a fresh child (`retries`),
  counted as `retried_<reason>`; a Python exception in the extractor is deterministic and not retried;
- the child's start-up has no page deadline: if it cannot start, the task fails loudly and reruns,
  instead of its pages being counted as timeouts;
- trafilatura's cross-document duplicate cache is emptied before every page, so a page's text does
  not depend on the pages the same task extracted before it (or on a child restart in between).

Documents that are already plain text (WET conversions, jsonl, parquet) pass through untouched.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from multiprocessing.connection import Connection

from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor
from datatrove.utils.logging import logger
from datatrove.utils.typeshelper import StatHints

from cpt.steps.read import FORMAT_KEY, TEXT

# Defaults (pipelines/configs/clean.yaml says why each is what it is)
MAX_CHARS = 5_000_000
CPU_TIMEOUT = 30.0
STALL_TIMEOUT = 120.0
RETRIES = 1

_POLL_MAX = 5.0  # seconds between looks at the child's CPU time while a page is being extracted


class PageTimeout(Exception):
    """The page used more than the CPU-time limit."""


class ExtractorStalled(Exception):
    """The child used no CPU for the whole safety-net interval: it hangs."""


class ExtractorCrashed(Exception):
    """The child died while extracting (killed by the OOM killer, a segfault in a C parser, ...)."""


class ExtractionError(Exception):
    """The extractor raised an exception on this page (deterministic: the same page raises again)."""


class ExtractorStartError(RuntimeError):
    """The extraction child could not start; the task fails and reruns rather than drop its pages."""


def _cpu_seconds() -> float:
    """CPU time (user + system) this process has used, from the kernel's accounting."""
    t = os.times()
    return t.user + t.system


def _child_main(conn: Connection, extract_fn, warmup: str) -> None:
    if sys.platform == "linux":
        try:  # under memory pressure the kernel kills the extractor first, not the task
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000\n")
        except OSError:
            pass
    try:
        extract_fn(warmup)  # imports and first-call set-up happen here, outside any page's budget
    except Exception:  # noqa: BLE001 - a warm-up failure shows again, with its message, on the first page
        pass
    conn.send(("ready", None, _cpu_seconds()))
    while True:
        try:
            html = conn.recv()
        except EOFError:
            return
        try:
            message = ("ok", extract_fn(html) or "")
        except Exception as e:  # noqa: BLE001 - reported to the parent, which drops the page
            message = ("error", f"{type(e).__name__}: {e}")
        conn.send((*message, _cpu_seconds()))


class ExtractionSandbox:
    """A child process that extracts one page at a time under a CPU-time limit.

    `extract(html)` returns the text or raises PageTimeout, ExtractorStalled, ExtractorCrashed or
    ExtractionError; after the first three the child is gone and the next call starts a new one.
    """

    def __init__(
        self,
        extract_fn,
        cpu_timeout: float = CPU_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        warmup: str = "",
    ):
        self.extract_fn = extract_fn
        self.cpu_timeout = cpu_timeout
        self.stall_timeout = stall_timeout
        self.warmup = warmup
        self.process = None
        self.conn: Connection | None = None
        self._idle_cpu = 0.0  # the child's CPU time when it last finished a page (or its start-up)
        self._ps = None

    def __enter__(self) -> ExtractionSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the child ------------------------------------------------------------------------------

    def _child_cpu(self) -> float | None:
        """The child's CPU time so far, or None once it has gone."""
        import psutil

        try:
            if self._ps is None or self._ps.pid != self.process.pid:
                self._ps = psutil.Process(self.process.pid)
            t = self._ps.cpu_times()
            return t.user + t.system
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def _start(self) -> None:
        # fork where it is safe (Linux): the child starts in milliseconds and shares the parent's
        # imports; elsewhere the platform's default
        ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_child_main, args=(child, self.extract_fn, self.warmup), daemon=True
        )
        self.process.start()
        child.close()
        self.conn = parent
        try:
            kind, _, cpu = self._wait(start_cpu=0.0, limit=None)
        except (ExtractorStalled, ExtractorCrashed) as e:
            self.close()
            raise ExtractorStartError(f"the extraction process could not start: {e}") from e
        if kind != "ready":
            self.close()
            raise ExtractorStartError(f"the extraction process sent {kind!r} instead of 'ready'")
        self._idle_cpu = cpu

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.process is not None:
            if self.process.is_alive():
                self.process.kill()
            self.process.join(timeout=10)
            self.process = None

    def _wait(self, start_cpu: float, limit: float | None) -> tuple:
        """The child's next message; raise when it exceeds `limit` CPU seconds, hangs or dies."""
        last_cpu, last_progress = start_cpu, time.monotonic()
        while True:
            # a single-threaded child cannot use more CPU than wall time: wait at most what is left
            left = _POLL_MAX if limit is None else limit - (last_cpu - start_cpu)
            if self.conn.poll(min(max(left, 0.05), _POLL_MAX)):
                try:
                    return self.conn.recv()
                except (EOFError, OSError) as e:
                    code = self._exitcode()
                    raise ExtractorCrashed(f"the extractor process died (exit code {code})") from e
            cpu = self._child_cpu()
            if cpu is None or not self.process.is_alive():
                raise ExtractorCrashed(f"the extractor process died (exit code {self._exitcode()})")
            now = time.monotonic()
            if limit is not None and cpu - start_cpu >= limit:
                raise PageTimeout(f"{cpu - start_cpu:.1f} s of CPU, over the limit of {limit:g} s")
            if cpu > last_cpu:
                last_cpu, last_progress = cpu, now
            elif now - last_progress >= self.stall_timeout:
                raise ExtractorStalled(f"no CPU used for {now - last_progress:.0f} s")

    def _exitcode(self) -> int | None:
        if self.process is None:
            return None
        self.process.join(timeout=1)
        return self.process.exitcode

    # -- a page ---------------------------------------------------------------------------------

    def extract(self, html: str) -> str:
        if self.process is None:
            self._start()
        try:
            self.conn.send(html)
            kind, payload, cpu = self._wait(self._idle_cpu, self.cpu_timeout)
        except (BrokenPipeError, ConnectionResetError) as e:
            self.close()
            raise ExtractorCrashed(f"the extractor process died (exit code {self._exitcode()})") from e
        except (PageTimeout, ExtractorStalled, ExtractorCrashed):
            self.close()
            raise
        self._idle_cpu = cpu
        if kind == "error":
            raise ExtractionError(payload)
        return payload


_FAILURES = {PageTimeout: "timeout", ExtractorStalled: "stalled", ExtractorCrashed: "extractor_crashed"}
FALLBACK = "extract_fallback"  # the counter of pages kept through the fallback extraction


class _SandboxedExtraction:
    """Mixin for a BaseExtractor: extract HTML pages in an ExtractionSandbox, forward plain text.

    Removal reasons: `too_large`, `timeout`, `stalled`, `extractor_crashed`, `extractor_error`,
    `empty_extraction`; counters `retried_<reason>` for the second tries.
    """

    def _limits(self, max_chars: int, cpu_timeout: float, stall_timeout: float, retries: int) -> None:
        self.max_chars = max_chars
        self.cpu_timeout = cpu_timeout
        self.stall_timeout = stall_timeout
        self.retries = retries

    def reset_state(self) -> None:
        """Forget whatever the extractor library remembers across pages (called before each page)."""

    def _extract_page(self, html: str) -> str:
        self.reset_state()
        return self.extract(html)

    def extract_with_retries(self, sandbox: ExtractionSandbox, doc) -> tuple[str, str | None]:
        """(text, None), or ("", removal reason) after the page failed every try."""
        if len(doc.text) > self.max_chars:
            return "", "too_large"
        reason = None
        for attempt in range(1 + self.retries):
            try:
                return sandbox.extract(doc.text), None
            except ExtractionError as e:
                logger.debug(f"extraction failed for {doc.id}: {e}")
                return "", "extractor_error"
            except tuple(_FAILURES) as e:
                reason = _FAILURES[type(e)]
                page = " ".join(str(x) for x in (doc.id, doc.metadata.get("url")) if x)
                logger.warning(f"extract: {page}, try {attempt + 1} of {1 + self.retries}: {reason} ({e})")
                if attempt < self.retries:
                    self.stat_update(f"retried_{reason}")
        return "", reason

    def run(self, data, rank: int = 0, world_size: int = 1):
        with ExtractionSandbox(self._extract_page, self.cpu_timeout, self.stall_timeout) as sandbox:
            for doc in data:
                self.stat_update(StatHints.total)
                if doc.metadata.get(FORMAT_KEY) == TEXT:
                    self.stat_update(StatHints.forwarded)
                    yield doc
                    continue
                with self.track_time():
                    text, reason = self.extract_with_retries(sandbox, doc)
                    if isinstance(text, tuple):  # the configured extraction was empty; its fallback was not
                        text = text[1]
                        self.stat_update(FALLBACK)
                    if reason is None and not text.strip():
                        reason = "empty_extraction"
                if reason:
                    self.stat_update(StatHints.dropped, f"dropped_{reason}")
                    continue
                doc.text = text
                doc.metadata[FORMAT_KEY] = TEXT
                self.stat_update(StatHints.forwarded)
                self.update_doc_stats(doc)
                yield doc


class TrafilaturaExtractor(_SandboxedExtraction, Trafilatura):
    """datatrove's Trafilatura (favour_precision as FineWeb), plain text out, no markdown."""

    name = "⛏ Trafilatura (cpt)"

    def __init__(
        self,
        favour_precision: bool = True,
        deduplicate: bool = True,
        include_tables: bool = False,
        max_chars: int = MAX_CHARS,
        cpu_timeout: float = CPU_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        retries: int = RETRIES,
        fallback: bool = True,
    ):
        self.fallback = fallback
        super().__init__(
            favour_precision=favour_precision,
            timeout=cpu_timeout,
            deduplicate=deduplicate,
            include_tables=include_tables,  # tables come out as `|`-separated cells, a markdown-like form
            include_formatting=False,  # no markdown emphasis in the training text
            include_links=False,
            output_format="txt",
        )
        self._limits(max_chars, cpu_timeout, stall_timeout, retries)

    def reset_state(self) -> None:
        # `deduplicate` drops text segments seen more than twice in an LRU cache that trafilatura keeps
        # across documents: left alone, a page's text would depend on the pages before it in the task
        from trafilatura.deduplication import LRU_TEST

        LRU_TEST.clear()

    def _extract_page(self, html: str):
        """The page's text; when the configured extraction is empty, the text trafilatura gives without
        `deduplicate` and with tables, as (FALLBACK, text). `deduplicate` empties a page whose segments
        repeat within it (a teaser printed twice), and `include_tables=False` one laid out in tables:
        each such page was a lost document."""
        text = super()._extract_page(html)
        if (text and text.strip()) or not self.fallback:
            return text
        from trafilatura import extract

        self.reset_state()
        again = extract(
            html,
            favor_precision=self.favour_precision,
            include_comments=False,
            **{**self.kwargs, "deduplicate": False, "include_tables": True},
        )
        return (FALLBACK, again) if again and again.strip() else text


class ResiliparseExtractor(_SandboxedExtraction, BaseExtractor):
    """resiliparse's main-content extraction (datatrove 0.10.1 ships no resiliparse extractor)."""

    name = "⛏ Resiliparse"
    _requires_dependencies = ["resiliparse"]

    def __init__(
        self,
        main_content: bool = True,
        max_chars: int = MAX_CHARS,
        cpu_timeout: float = CPU_TIMEOUT,
        stall_timeout: float = STALL_TIMEOUT,
        retries: int = RETRIES,
    ):
        super().__init__(cpu_timeout)
        self.main_content = main_content
        self._limits(max_chars, cpu_timeout, stall_timeout, retries)

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
    backend: str,
    favour_precision: bool = True,
    include_tables: bool = False,
    max_chars: int = MAX_CHARS,
    cpu_timeout: float = CPU_TIMEOUT,
    stall_timeout: float = STALL_TIMEOUT,
    retries: int = RETRIES,
    fallback: bool = True,
) -> BaseExtractor:
    limits = dict(max_chars=max_chars, cpu_timeout=cpu_timeout, stall_timeout=stall_timeout, retries=retries)
    if backend == "resiliparse":
        return ResiliparseExtractor(**limits)
    return TrafilaturaExtractor(
        favour_precision=favour_precision, include_tables=include_tables, fallback=fallback, **limits
    )
