"""`cpt report`: one static HTML page (index.html and its PNG plots) over the outputs of a project.

Sections: the funnel of each pipeline run (documents in, kept and removed per step and reason), dedup
rates per level and language, the composition of each stage manifest, tokenizer compression before
and after extension, training curves across stages (with benchmark accuracy where the trainer ran
`eval.benchmarks`, the LR anneal and the sequence-length / batch ramps marked), needle-in-a-haystack
heat maps before and after where the trainer ran `eval.needle`, `cpt eval` benchmarks and greedy
continuations before and after, and forgetting against learning for `cpt ablate` grids. The page
needs no server, script or network: open index.html in any browser.

The page is written to a temporary folder beside the output and renamed into place, so an interrupted
report never leaves half a page.
"""

from __future__ import annotations

import html
from pathlib import Path

from cpt.io import holds_only, written_dir
from cpt.mix.chart import composition_chart
from cpt.report import figures
from cpt.report.collect import Found, ReportError, Run, chains, change_text, collect, needle_steps

# what `cpt report` writes: an --output that holds anything else is not replaced
REPORT_FOLDER = holds_only("index.html", "img")

_CSS = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", "Noto Sans CJK SC", sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.05em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: .85em; margin: .6em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #666; font-size: .85em; }
code { background: #f5f5f5; padding: 0 .2em; }
nav a { margin-right: 1em; }
"""


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def _img(rel: str, alt: str) -> str:
    return f'<p><img src="{html.escape(rel)}" alt="{html.escape(alt)}"></p>'


def _label(path: Path, base: Path | None = None) -> str:
    try:
        return str(path.relative_to(base or Path.cwd()))
    except ValueError:
        return str(path)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_") or "x"


class _Page:
    def __init__(self, folder: Path):
        self.folder = folder
        self.parts: list[str] = []
        self.sections: list[tuple[str, str]] = []
        self.images = 0

    def section(self, anchor: str, title: str, intro: str) -> None:
        self.sections.append((anchor, title))
        self.parts.append(f'<h2 id="{anchor}">{html.escape(title)}</h2><p class="note">{intro}</p>')

    def image_path(self, name: str) -> tuple[Path, str]:
        self.images += 1
        rel = f"img/{self.images:02d}_{_slug(name)}.png"
        return self.folder / rel, rel


def _funnels(page: _Page, found: Found) -> None:
    if not found.funnels:
        return
    page.section(
        "funnel",
        "Pipeline funnels",
        "Each step's documents in, kept and removed by reason (in = kept + removed, always).",
    )
    for output, funnel in found.funnels:
        name = f"{funnel.get('pipeline') or output.name}: {_label(output)}"
        page.parts.append(f"<h3>{html.escape(name)}</h3>")
        path, rel = page.image_path(f"funnel_{name}")
        figures.funnel_chart(funnel, name, path)
        page.parts.append(_img(rel, f"funnel of {name}"))
        rows = []
        for s in funnel["steps"]:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(s["removed"].items(), key=lambda kv: -kv[1]))
            counters = ", ".join(f"{k} {v:,}" for k, v in s.get("counters", {}).items())
            pct = 100 * s["kept"] / s["docs_in"] if s["docs_in"] else 0.0
            rows.append(
                [s["step"], s["docs_in"], s["kept"], s["removed_total"], f"{pct:.1f}%", reasons, counters]
            )
        page.parts.append(
            _table(["step", "in", "kept", "removed", "kept %", "removed by reason", "counts"], rows)
        )
        if funnel.get("outputs"):
            written = ", ".join(f"{k}: {v:,}" for k, v in sorted(funnel["outputs"].items()))
            page.parts.append(f'<p class="note">written by language: {html.escape(written)}</p>')
        for warning in funnel.get("warnings", []):
            page.parts.append(f'<p class="note">warning: {html.escape(warning)}</p>')
        if funnel.get("tasks_done", 0) < funnel.get("tasks_total", 0):
            page.parts.append(
                f'<p class="note">partial: {funnel["tasks_done"]}/{funnel["tasks_total"]} tasks finished</p>'
            )


def _dedup(page: _Page, found: Found) -> None:
    runs = [(o, f) for o, f in found.funnels if f.get("pipeline") == "dedup"]
    if not runs:
        return
    page.section(
        "dedup",
        "Dedup rates per level and language",
        "Share of each language's documents removed by exact URL, MinHash near-duplicate and line-level "
        "dedup (the line level removes lines, not documents: its bar is lines removed per document).",
    )
    for output, funnel in runs:
        name = _label(output)
        path, rel = page.image_path(f"dedup_{name}")
        figures.dedup_chart(funnel, f"dedup: {name}", path)
        page.parts.append(f"<h3>{html.escape(name)}</h3>" + _img(rel, f"dedup rates of {name}"))
        rows = []
        for lang, steps in sorted((funnel.get("languages") or {}).items()):
            for s in steps:
                if s["step"] in ("read", "write"):
                    continue
                rate = 100 * s["removed_total"] / s["docs_in"] if s["docs_in"] else 0.0
                lines = s.get("counters", {}).get("lines_removed", "")
                rows.append([lang, s["step"], s["docs_in"], s["removed_total"], f"{rate:.1f}%", lines])
        if rows:
            page.parts.append(_table(["language", "level", "in", "removed", "rate", "lines removed"], rows))


def _mixes(page: _Page, found: Found) -> None:
    if not found.manifests:
        return
    page.section(
        "mix",
        "Mix composition of each stage",
        "Share of each stage's token budget per source (replay hatched) and how many epochs each source "
        "is read; the dashed line marks 4 epochs, past which repeated data stops paying off.",
    )
    for folder, manifest in sorted(found.manifests, key=lambda fm: fm[1]["stage"]):
        path, rel = page.image_path(f"mix_{manifest['stage']}")
        composition_chart(manifest, path)
        page.parts.append(f"<h3>stage {html.escape(manifest['stage'])} ({html.escape(_label(folder))})</h3>")
        page.parts.append(_img(rel, f"composition of stage {manifest['stage']}"))
        rows = [
            [s["name"], s["role"], s["tokens_used"], s["tokens_available"], f"{s['share']:.1%}", s["epochs"]]
            for s in manifest["sources"]
        ]
        page.parts.append(
            _table(["source", "role", "tokens used", "tokens available", "share", "epochs"], rows)
        )


def _compression(page: _Page, found: Found) -> None:
    if not found.compression:
        return
    page.section(
        "tokenizer",
        "Tokenizer compression before and after extension",
        "Tokens per character per language, for each tokenizer compared by <code>cpt-tok report --json</code>; "
        "the last column is the token count relative to the first (base) tokenizer.",
    )
    for folder, rows in found.compression:
        name = _label(folder)
        path, rel = page.image_path(f"tok_{name}")
        figures.compression_chart(rows, f"tokenizers: {name}", path)
        page.parts.append(f"<h3>{html.escape(name)}</h3>" + _img(rel, f"tokenizer compression in {name}"))
        first = rows[0]["tokenizer"]
        base = {r["lang"]: r["tokens"] for r in rows if r["tokenizer"] == first}
        table = [
            [
                r["lang"],
                r["tokenizer"],
                r["tokens"],
                r["tokens_per_char"],
                r["bytes_per_token"],
                r["tokens"] / max(base.get(r["lang"], 0), 1),
            ]
            for r in sorted(rows, key=lambda r: (r["lang"], r["tokenizer"] != first))
        ]
        page.parts.append(
            _table(["lang", "tokenizer", "tokens", "tokens/char", "bytes/token", "vs base"], table)
        )


def _training(page: _Page, found: Found) -> None:
    if not found.runs:
        return
    page.section(
        "training",
        "Training curves across stages",
        "Loss, loss per source, learning rate, held-out perplexity of the old and the new domain and, where "
        "the trainer ran <code>eval.benchmarks</code>, benchmark accuracy (the forgetting and learning view: "
        "MMLU for the old domain, CMMLU / C-Eval for the new); a run started with <code>--init-from</code> "
        "another follows it on the same axis."
        + (
            " A shaded span is a stage's LR anneal to 0, a thin line where a sequence-length / batch ramp "
            "steps up."
            if any(_shape_note(r) for r in found.runs)
            else ""
        ),
    )
    for chain in chains(found.runs):
        title = " → ".join(r.origin.get("stage") or r.name for r in chain)
        path, rel = page.image_path(f"train_{title}")
        figures.training_chart(chain, title, path)
        page.parts.append(f"<h3>{html.escape(title)}</h3>" + _img(rel, f"training curves of {title}"))
        for run in chain:
            note = _shape_note(run)
            if note:
                page.parts.append(f'<p class="note">{note}</p>')
        rows = []
        for run in chain:
            last = run.metrics[max(run.metrics)] if run.metrics else {}
            first = run.metrics.get(0, {})
            evals = sorted(k for k in last if k.startswith("eval/") and k.endswith("/ppl"))
            ppl = "; ".join(f"{k[5:-4]} {first.get(k, float('nan')):.4g} → {last[k]:.4g}" for k in evals)
            benches = sorted(k for k in last if k.startswith("bench/") and k.endswith("/acc"))
            acc = "; ".join(f"{k[6:-4]} {first.get(k, float('nan')):.3f} → {last[k]:.3f}" for k in benches)
            rows.append(
                [_label(run.path), max(run.metrics, default=0), last.get("tokens_seen", ""), ppl, acc]
            )
        header = [
            "run",
            "steps",
            "tokens seen",
            "held-out perplexity (start → end)",
            "benchmark acc (start → end)",
        ]
        page.parts.append(_table(header, rows))


def _shape_note(run: Run) -> str:
    """One line on the run's LR anneal and ramps (run.json), or nothing for a run without them."""
    name = html.escape(run.origin.get("stage") or run.name)
    parts = []
    anneal = run.origin.get("anneal")
    if anneal and anneal.get("steps"):
        first, steps = anneal["first_step"], anneal["steps"]
        parts.append(
            f"LR anneal to 0: the LR decays linearly to zero over steps {first:,}–{first + steps - 1:,} "
            f"({steps:,} steps, the stage's last {anneal.get('tokens', 0):,} tokens; shaded on the chart)"
        )
    ramps = run.origin.get("ramps") or []
    if len(ramps) > 1 or any(r["first_step"] for r in ramps):
        steps = "; ".join(
            f"from step {r['first_step']:,}: seq_len {r['seq_len']:,} × batch {r['batch']:,}" for r in ramps
        )
        parts.append(f"ramps (thin lines on the chart): {steps}")
    return f"{name}: " + ". ".join(parts) + "." if parts else ""


def _needle(page: _Page, found: Found) -> None:
    runs = [r for r in sorted(found.runs, key=lambda r: str(r.path)) if needle_steps(r)]
    if not runs:
        return
    page.section(
        "needle",
        "Needle in a haystack",
        "Passkey retrieval from the run's own held-out text (<code>eval.needle</code>): a heat map of the "
        "accuracy at each needle depth and prompt length, at the first evaluation (before) and the last "
        "(after), beside the short-context held-out perplexity at the same steps: a stage that lengthens the "
        "context should raise the accuracy at long lengths without raising the perplexity.",
    )
    for run in runs:
        name = f"{run.origin.get('stage') or run.name} ({_label(run.path)})"
        path, rel = page.image_path(f"needle_{name}")
        figures.needle_chart(run, f"needle in a haystack: {name}", path)
        page.parts.append(
            f"<h3>{html.escape(name)}</h3>" + _img(rel, f"needle-in-a-haystack heat map of {name}")
        )
        steps = needle_steps(run)
        shown = [("before", steps[0]), ("after", steps[-1])] if len(steps) > 1 else [("at", steps[0])]
        sets = sorted(
            {k for _, s in shown for k in run.metrics[s] if k.startswith("eval/") and k.endswith("/ppl")}
        )
        rows = [
            [
                which,
                step,
                run.metrics[step].get("needle/accuracy", ""),
                *[run.metrics[step].get(k, "") for k in sets],
            ]
            for which, step in shown
        ]
        page.parts.append(
            _table(["evaluation", "step", "needle accuracy", *[f"{k[5:-4]} ppl" for k in sets]], rows)
        )


def _ablations(page: _Page, found: Found) -> None:
    if not found.ablations:
        return
    page.section(
        "ablation",
        "Forgetting against learning",
        "Short CPT runs from one base, each evaluated on old-domain and new-domain held-out text: "
        "forgetting is the rise of the old domain's loss, learning the fall of the new domain's.",
    )
    for folder, summary in found.ablations:
        path, rel = page.image_path(f"ablation_{summary['name']}")
        figures.ablation_chart(summary, path)
        page.parts.append(f"<h3>{html.escape(summary['name'])} ({html.escape(_label(folder))})</h3>")
        page.parts.append(_img(rel, f"forgetting against learning, {summary['name']}"))
        if summary["runs"] and all((folder / r["run"] / "metrics.jsonl").is_file() for r in summary["runs"]):
            path, rel = page.image_path(f"ablation_curves_{summary['name']}")
            figures.ablation_curves(summary, folder, path)
            page.parts.append(_img(rel, f"held-out loss of every run, {summary['name']}"))
        keys = list(summary["runs"][0]["params"]) if summary["runs"] else []
        rows = [
            [
                r["name"],
                *[r["params"][k] for k in keys],
                r["old_loss"][0],
                r["old_loss"][1],
                r["forgetting"],
                r["new_loss"][0],
                r["new_loss"][1],
                r["learning"],
                *([f"{r['old_acc'][0]:.3f} → {r['old_acc'][1]:.3f}", f"{r['new_acc'][0]:.3f} → {r['new_acc'][1]:.3f}"]
                  if "old_acc" in r else []),
            ]
            for r in summary["runs"]
        ]  # fmt: skip
        header = [
            "run",
            *keys,
            "old loss start",
            "old loss end",
            "forgetting",
            "new loss start",
            "new loss end",
            "learning",
        ]
        if "old_bench" in summary.get("eval", {}):
            header += [
                f"{summary['eval']['old_bench']} acc (old)",
                f"{summary['eval']['new_bench']} acc (new)",
            ]
        page.parts.append(_table(header, rows))
        findings = summary.get("findings", [])
        if findings:
            items = "".join(
                f"<li><b>{'reproduced' if f['reproduced'] else 'not reproduced'}</b>: {html.escape(f['claim'])} "
                f"<span class='note'>({html.escape(f['evidence'])})</span></li>"
                for f in findings
            )
            page.parts.append(f"<ul>{items}</ul>")


def _acc(figures: dict | None) -> str:
    if not figures:
        return ""
    return f"{figures['acc']:.3f} ± {figures['stderr']:.3f} ({figures['n']})"


def _benchmarks(page: _Page, found: Found) -> None:
    if not found.evals:
        return
    page.section(
        "benchmarks",
        "Benchmarks before and after",
        "<code>cpt eval</code> of each model: accuracy ± standard error (questions) on lm-eval's MMLU "
        "(the old domain, English), CMMLU and C-Eval (the new one, Chinese); the change is against the first "
        "row (the base, where the folders are given base first), ± the standard error of that change; a change "
        "under two of them is marked <em>within noise</em>. Four choices: chance is 0.25.",
    )
    # the old domain first: MMLU, then CMMLU and C-Eval; English, then Chinese
    order = ["mmlu", "cmmlu", "ceval", "en", "zh"]
    names = sorted(
        {k for _, e in found.evals for k in (*e["tasks"], *e["languages"])},
        key=lambda k: (order.index(k) if k in order else len(order), k),
    )
    first = found.evals[0][1]
    rows = []
    for folder, e in found.evals:
        row = [_label(folder), _label(Path(e["model"])), e["shots"]]
        for name in names:
            figures = e["tasks"].get(name) or e["languages"].get(name)
            before = first["tasks"].get(name) or first["languages"].get(name)
            change = (
                f" ({change_text(figures['acc'], figures.get('stderr'), before['acc'], before.get('stderr'))})"
                if figures and before and e is not first
                else ""
            )
            row.append(_acc(figures) + change)
        rows.append(row)
    header = [
        "evaluation",
        "model",
        "shots",
        *[n if n in first["tasks"] else f"{n} (language)" for n in names],
    ]
    page.parts.append(_table(header, rows))
    prompts = [c["prompt"] for c in found.evals[0][1].get("continuations", [])]
    if prompts:
        page.parts.append(
            "<h3>Greedy continuations of fixed prompts</h3><p class='note'>Can the model still continue "
            "English, and does it now continue Chinese? The same prompts, no sampling.</p>"
        )
        by_prompt = [
            {c["prompt"]: c["continuation"] for c in e.get("continuations", [])} for _, e in found.evals
        ]
        rows = [[p, *[b.get(p, "") for b in by_prompt]] for p in prompts]
        page.parts.append(_table(["prompt", *[_label(f) for f, _ in found.evals]], rows))


def write_report(folders: list[str | Path], output: str | Path, title: str = "cpt report") -> Path:
    """Collect what `folders` hold and write OUTPUT/index.html with its plots; returns the page."""
    found = collect(folders)
    if found.empty():
        raise ReportError(
            f"{', '.join(map(str, folders))}: nothing to report (no funnel.json, manifest.json, "
            "compression.json, metrics.jsonl, ablation.json or cpt eval summary.json)"
        )
    output = Path(output)
    with written_dir(output, REPORT_FOLDER, "cpt report") as tmp:  # never half a report
        (tmp / "img").mkdir()
        page = _Page(tmp)
        for part in (_funnels, _dedup, _mixes, _compression, _training, _needle, _benchmarks, _ablations):
            part(page, found)
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in page.sections)
        # no time stamp: the same inputs give the same page, byte for byte
        sources = ", ".join(html.escape(str(f)) for f in folders)
        doc = (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="note">from {sources}</p><nav>{nav}</nav>{"".join(page.parts)}</body></html>\n'
        )
        (tmp / "index.html").write_text(doc, encoding="utf-8")
    return output / "index.html"
