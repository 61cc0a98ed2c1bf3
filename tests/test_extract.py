"""The extraction step's limits: decided by the page (its size, the CPU time it needs), never by load."""

from __future__ import annotations

import os
import time

import pytest
from datatrove.data import Document
from datatrove.pipeline.extractors.base import BaseExtractor

from conftest import busy_cores
from cpt.steps.extract import ExtractorStartError, TrafilaturaExtractor, _SandboxedExtraction


def _burn(cpu_seconds: float) -> None:
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


class ScriptedExtractor(_SandboxedExtraction, BaseExtractor):
    """Does what the page says: `burn:S` uses S seconds of CPU, `sleep:S` waits S seconds using none,
    `spin` never returns, `raise` raises, anything else comes back as it is."""

    name = "scripted"

    def __init__(self, **limits):
        super().__init__(limits.get("cpu_timeout", 30))
        self._limits(
            limits.get("max_chars", 1000),
            limits.get("cpu_timeout", 30),
            limits.get("stall_timeout", 120),
            limits.get("retries", 1),
        )

    def extract(self, text: str) -> str:
        if not text:  # the sandbox's warm-up
            if os.environ.get("CPT_TEST_BROKEN_START"):
                os._exit(3)
            return ""
        command, _, arg = text.partition(":")
        if command == "burn":
            _burn(float(arg))
        elif command == "sleep":
            time.sleep(float(arg))
        elif command == "spin":
            while True:
                pass
        elif command == "raise":
            raise ValueError("this page breaks the extractor")
        return f"text of {text}"


def pages(*texts: str) -> list[Document]:
    return [Document(text=t, id=f"p{i}", metadata={"format": "html"}) for i, t in enumerate(texts)]


def run_step(step, docs: list[Document]) -> tuple[list[str], dict[str, int]]:
    kept = [d.text for d in step.run(docs)]
    return kept, {k: int(v.total) for k, v in step.stats.stats.items() if k != "doc_len"}


def test_a_page_slowed_by_a_busy_machine_is_kept_and_a_spinning_page_is_dropped_as_timeout():
    step = ScriptedExtractor(cpu_timeout=1.0)
    with busy_cores(per_core=3) as load:  # every core shared by three CPU-bound processes
        start = time.monotonic()
        kept, stats = run_step(step, pages("burn:0.5", "spin", "burn:0.3"))
        elapsed = time.monotonic() - start
    assert load.processes >= 3
    # both slow pages are kept: each needed less CPU than the limit, whatever the wall clock said
    assert kept == ["text of burn:0.5", "text of burn:0.3"]
    assert stats["dropped_timeout"] == 1 and stats["retried_timeout"] == 1  # tried twice, then dropped
    assert stats["forwarded"] == 2 and stats["total"] == 3
    assert elapsed > 2.0  # the spinning page used two full CPU budgets (one per try)


def test_a_page_that_waits_without_using_cpu_is_kept_and_a_hung_extractor_is_dropped_as_stalled():
    kept, stats = run_step(ScriptedExtractor(cpu_timeout=0.5, stall_timeout=30), pages("sleep:1.5"))
    assert kept == ["text of sleep:1.5"] and "dropped_timeout" not in stats  # 1.5 s of wall, no CPU

    kept, stats = run_step(ScriptedExtractor(stall_timeout=1, retries=0), pages("sleep:600", "ok"))
    assert kept == ["text of ok"]  # the next page gets a fresh extractor
    assert stats["dropped_stalled"] == 1 and "retried_stalled" not in stats


def test_oversized_pages_and_extractor_errors_are_dropped_by_rule_and_not_retried():
    kept, stats = run_step(ScriptedExtractor(max_chars=20), pages("x" * 21, "raise", "ok"))
    assert kept == ["text of ok"]
    assert stats["dropped_too_large"] == 1 and stats["dropped_extractor_error"] == 1
    assert not any(k.startswith("retried_") for k in stats)


def test_an_extractor_that_cannot_start_fails_the_task_instead_of_dropping_its_pages(monkeypatch):
    monkeypatch.setenv("CPT_TEST_BROKEN_START", "1")
    step = ScriptedExtractor()
    with pytest.raises(ExtractorStartError, match="could not start"):
        run_step(step, pages("ok"))
    assert "dropped_timeout" not in step.stats.stats


def test_trafilatura_text_of_a_page_does_not_depend_on_the_pages_before_it():
    paragraphs = "".join(
        f"<p>Paragraph {i} of the report on the harbour works, which the council published this week.</p>"
        for i in range(12)
    )
    html = f"<html><body><article><h1>Harbour works</h1>{paragraphs}</article></body></html>"
    # trafilatura's `deduplicate` remembers segments across documents: without the reset, the same page
    # extracted a third time loses the paragraphs it has "seen" twice already
    kept, _ = run_step(TrafilaturaExtractor(), pages(html, html, html, html))
    assert len(kept) == 4 and len(set(kept)) == 1 and "Paragraph 11" in kept[0]


def test_cpt_runs_trafilatura_2_and_its_table_option_reaches_the_extractor():
    import inspect

    import trafilatura

    # cpt depends on trafilatura 2.x itself: datatrove's `processing` extra would cap it below 1.12
    assert int(trafilatura.__version__.split(".")[0]) == 2
    extractor = TrafilaturaExtractor()
    accepted = set(inspect.signature(trafilatura.extract).parameters)
    assert {"favor_precision", "include_comments", "deduplicate", *extractor.kwargs} <= accepted
    paragraphs = "".join(
        f"<p>Paragraph {i} of the report on the harbour works, which the council published this week.</p>"
        for i in range(8)
    )
    table = "<table><tr><td>Quay length</td><td>412 metres</td></tr></table>"
    html = f"<html><body><article><h1>Harbour works</h1>{paragraphs}{table}</article></body></html>"
    without, _ = run_step(TrafilaturaExtractor(include_tables=False), pages(html))
    with_tables, _ = run_step(TrafilaturaExtractor(include_tables=True), pages(html))
    assert "Paragraph 7" in without[0] and "412 metres" not in without[0]
    assert "412 metres" in with_tables[0]
