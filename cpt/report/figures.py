"""The report's plots, drawn with matplotlib to PNG files (no display, no network)."""

from __future__ import annotations

from pathlib import Path

from cpt.report.collect import Run


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Chinese labels (languages, sources) render where a CJK font is installed, and fall back otherwise
    plt.rcParams["font.sans-serif"] = ["DejaVu Sans", "Noto Sans CJK SC", "Noto Sans CJK JP"]
    return plt


def _save(fig, path: Path, tight: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:  # (a figure with a colorbar shared by panels lays itself out: constrained layout)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def funnel_chart(funnel: dict, title: str, path: Path) -> Path:
    """One bar a step: kept, then what it removed stacked by reason (bar length = documents in)."""
    plt = _pyplot()
    steps = funnel["steps"][::-1]
    reasons = sorted(
        {r for s in steps for r in s["removed"]}, key=lambda r: -sum(s["removed"].get(r, 0) for s in steps)
    )
    # distinct colours for up to 39 reasons, none the blue of `kept`
    colors = plt.get_cmap("tab20").colors[1:] + plt.get_cmap("tab20b").colors
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.38 * max(len(steps), len(reasons) / 2)))
    names = [s["step"] for s in steps]
    ax.barh(names, [s["kept"] for s in steps], color="#4c72b0", label="kept")
    left = [s["kept"] for s in steps]
    for i, reason in enumerate(reasons):
        widths = [s["removed"].get(reason, 0) for s in steps]
        ax.barh(names, widths, left=left, color=colors[i % len(colors)], label=reason)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlabel("documents (bar = documents in: kept, then removed by reason)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _save(fig, path)


def dedup_chart(funnel: dict, title: str, path: Path) -> Path:
    """Share of documents each level removed, per language (lines: share of documents touched is not
    known, so its bar is the lines removed per document in)."""
    plt = _pyplot()
    languages = funnel.get("languages") or {"all": funnel["steps"]}
    levels = [s["step"] for s in funnel["steps"] if s["step"] not in ("read", "write")]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / max(len(languages), 1)
    for i, (lang, rows) in enumerate(sorted(languages.items())):
        by_step = {r["step"]: r for r in rows}
        rates = []
        for level in levels:
            r = by_step.get(level, {"docs_in": 0, "removed_total": 0, "counters": {}})
            removed = r["removed_total"] or r["counters"].get("lines_removed", 0)
            rates.append(100 * removed / r["docs_in"] if r["docs_in"] else 0.0)
        xs = [j + i * width for j in range(len(levels))]
        bars = ax.bar(xs, rates, width=width, label=lang)
        ax.bar_label(bars, fmt="%.1f%%", fontsize=7)
    ax.set_xticks([j + width * (len(languages) - 1) / 2 for j in range(len(levels))])
    ax.set_xticklabels([f"{lv}\n(lines per doc)" if lv == "lines" else lv for lv in levels])
    ax.set_ylabel("% of documents in removed")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def compression_chart(rows: list[dict], title: str, path: Path) -> Path:
    """Tokens per character of each tokenizer, per language (lower is better)."""
    plt = _pyplot()
    tokenizers = list(dict.fromkeys(r["tokenizer"] for r in rows))
    langs = sorted({r["lang"] for r in rows})
    value = {(r["tokenizer"], r["lang"]): r["tokens_per_char"] for r in rows}
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(tokenizers)
    for i, tok in enumerate(tokenizers):
        xs = [j + i * width for j in range(len(langs))]
        bars = ax.bar(xs, [value.get((tok, lang), 0) for lang in langs], width=width, label=_short(tok))
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(tokenizers) - 1) / 2 for j in range(len(langs))])
    ax.set_xticklabels(langs)
    ax.set_ylabel("tokens per character")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _short(name: str, keep: int = 40) -> str:
    return name if len(name) <= keep else "…" + name[-keep + 1 :]


def _series(run: Run, key: str, offset: int) -> tuple[list[int], list[float]]:
    points = [
        (step + offset, rec[key]) for step, rec in sorted(run.metrics.items()) if rec.get(key) is not None
    ]
    return [p[0] for p in points], [p[1] for p in points]


def training_chart(chain: list[Run], title: str, path: Path) -> Path:
    """Loss, loss per source, learning rate and held-out perplexity across the stages of a chain; the
    x axis counts optimizer steps from the first stage, with a dashed line where each stage starts."""
    plt = _pyplot()
    bench_keys = sorted(
        {
            k
            for run in chain
            for rec in run.metrics.values()
            for k in rec
            if k.startswith("bench/")
            and k.endswith("/acc")
            and k.count("/") == 2
            and k.split("/")[1] not in ("en", "zh")  # the tasks; a language pools them again
        }
    )
    if bench_keys:  # a third column: benchmark accuracy beside the perplexities
        fig, axes = plt.subplots(2, 3, figsize=(15, 6.4))
        (loss_ax, source_ax, bench_ax), (lr_ax, ppl_ax, spare_ax) = axes
        spare_ax.set_visible(False)
    else:
        fig, axes = plt.subplots(2, 2, figsize=(11, 6.4))
        (loss_ax, source_ax), (lr_ax, ppl_ax) = axes
        bench_ax = None
    eval_keys = sorted(
        {
            k
            for run in chain
            for rec in run.metrics.values()
            for k in rec
            if k.startswith("eval/") and k.endswith("/ppl")
        }
    )
    offset = 0
    shapes = []  # (run, its first step on the axis, its last step): anneal and ramps, marked at the end
    marked: set[tuple] = set()  # (mark, axis) already in a legend: one entry a chart, not one a stage
    for n, run in enumerate(chain):
        last = max(run.metrics) if run.metrics else 0
        label = run.origin.get("stage") or run.name
        xs, ys = _series(run, "loss", offset)
        loss_ax.plot(xs, ys, label=label)
        for key in sorted({k for rec in run.metrics.values() for k in rec if k.startswith("loss/")}):
            xs, ys = _series(run, key, offset)
            source_ax.plot(xs, ys, label=f"{label}: {key[5:]}", linewidth=1)
        xs, ys = _series(run, "lr", offset)
        lr_ax.plot(xs, ys, label=label)
        for i, key in enumerate(eval_keys):
            xs, ys = _series(run, key, offset)
            if xs:
                ppl_ax.plot(
                    xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=f"{label}: {key[5:-4]}"
                )
        for i, key in enumerate(bench_keys):
            xs, ys = _series(run, key, offset)
            if xs:
                bench_ax.plot(
                    xs, ys, marker="o", markersize=3, color=f"C{i % 10}", label=f"{label}: {key[6:-4]}"
                )
        if n:
            for ax in axes.flat:
                ax.axvline(offset, color="grey", linestyle="--", linewidth=0.8)
        shapes.append((run, offset, last))
        offset += last
    drawn = [ax for ax in axes.flat if ax.get_visible() and ax.has_data()]  # an empty panel stays empty
    for run, start, last in shapes:
        _mark_shape(run, start, last, drawn, (loss_ax, lr_ax), marked)
    for ax, name in [
        (loss_ax, "training loss"),
        (source_ax, "loss per source"),
        (lr_ax, "learning rate"),
        (ppl_ax, "held-out perplexity (old and new domain)"),
        *([(bench_ax, "benchmark accuracy (chance 0.25)")] if bench_ax is not None else []),
    ]:
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step (stages in a row)", fontsize=8)
        if ax.has_data():
            ax.legend(fontsize=6)
    if ppl_ax.has_data():
        ppl_ax.set_yscale("log")
    if bench_ax is not None:
        bench_ax.axhline(0.25, color="grey", linestyle=":", linewidth=0.8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _mark_shape(run: Run, offset: int, last: int, axes: list, text_axes: tuple, marked: set[tuple]) -> None:
    """The run's LR anneal (a shaded span) and its sequence-length / batch ramps (a thin line where each
    starts, labelled with its length and batch), from run.json; steps past the run's last are not drawn."""
    anneal = run.origin.get("anneal")
    if anneal and anneal.get("steps"):
        start, end = anneal["first_step"], min(anneal["first_step"] + anneal["steps"], last)
        if start < end:
            for ax in axes:
                label = "LR anneal to 0" if ("anneal", ax) not in marked else None
                ax.axvspan(
                    offset + start, offset + end, color="#f0b27a", alpha=0.25, linewidth=0, label=label
                )
                marked.add(("anneal", ax))
    for ramp in run.origin.get("ramps") or []:
        at = ramp["first_step"]
        if at > last:
            continue
        for ax in axes:
            if at:
                label = "ramp: seq_len × batch" if ("ramp", ax) not in marked else None
                ax.axvline(offset + at, color="#8172b3", linewidth=0.6, label=label)
                marked.add(("ramp", ax))
            if ax in text_axes:
                label = f" {ramp['seq_len']}×{ramp['batch']}"
                ax.text(offset + at, 0.98, label, transform=ax.get_xaxis_transform(), rotation=90, va="top",
                        ha="left", fontsize=6, color="#8172b3")  # fmt: skip


def needle_chart(run: Run, title: str, path: Path) -> Path:
    """Passkey accuracy by needle depth (rows) and prompt length (columns), at the run's first and last
    evaluation side by side, each titled with the held-out perplexity at that step."""
    from cpt.report.collect import needle_cells, needle_steps

    plt = _pyplot()
    steps = needle_steps(run)
    shown = [steps[0], steps[-1]] if len(steps) > 1 else steps[:1]
    cells = {step: needle_cells(run.metrics[step]) for step in shown}
    lengths = sorted({n for c in cells.values() for n, _ in c})
    depths = sorted({d for c in cells.values() for _, d in c})
    size = (1.5 + 5.2 * len(shown), 2.0 + 0.45 * len(depths))
    fig, axes = plt.subplots(1, len(shown), figsize=size, squeeze=False, layout="constrained")
    image = None
    for ax, step, which in zip(axes[0], shown, ("before", "after"), strict=False):
        grid = [[cells[step].get((n, d), float("nan")) for n in lengths] for d in depths]
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                ax.text(j, i, "–" if value != value else f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [f"{n:,}" for n in lengths], fontsize=8)
        ax.set_yticks(range(len(depths)), [f"{d}%" for d in depths], fontsize=8)
        ax.set_xlabel("prompt length (tokens)", fontsize=8)
        ax.set_ylabel("needle depth", fontsize=8)
        record = run.metrics[step]
        ppl = ", ".join(
            f"{k[5:-4]} {record[k]:.4g}"
            for k in sorted(record)
            if k.startswith("eval/") and k.endswith("/ppl")
        )
        accuracy = record.get("needle/accuracy")
        head = f"{which} (step {step})" if len(shown) > 1 else f"step {step}"
        ax.set_title(head + (f": accuracy {accuracy:.2f}" if accuracy is not None else "")
                     + (f"\nheld-out ppl: {ppl}" if ppl else ""), fontsize=9)  # fmt: skip
    fig.colorbar(image, ax=list(axes[0]), fraction=0.04, pad=0.02, label="passkey accuracy")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, tight=False)


def ablation_chart(summary: dict, path: Path) -> Path:
    """Forgetting (rise of the old domain's held-out loss) against learning (fall of the new domain's),
    one point a run: down and to the right is better."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for i, run in enumerate(summary["runs"]):
        ax.scatter(run["learning"], run["forgetting"], color=f"C{i % 10}", s=40, zorder=3)
        ax.annotate(
            run["name"],
            (run["learning"], run["forgetting"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xlabel(f"learning: fall of the new domain's held-out loss ({summary['eval']['new']})")
    ax.set_ylabel(f"forgetting: rise of the old domain's held-out loss ({summary['eval']['old']})")
    ax.set_title(f"ablation {summary['name']}: {len(summary['runs'])} runs from one base", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def ablation_curves(summary: dict, folder: Path, path: Path) -> Path:
    """Held-out loss of the old and the new domain against the step, for every run of a grid."""
    from cpt.report.collect import read_metrics

    plt = _pyplot()
    fig, (old_ax, new_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, run in enumerate(summary["runs"]):
        metrics = read_metrics(folder / run["run"])
        for ax, name in ((old_ax, summary["eval"]["old"]), (new_ax, summary["eval"]["new"])):
            key = f"eval/{name}/loss"
            points = sorted((s, r[key]) for s, r in metrics.items() if r.get(key) is not None)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, color=f"C{i % 10}",
                    label=run["name"])  # fmt: skip
    old_ax.set_title(f"old domain ({summary['eval']['old']}): held-out loss", fontsize=9)
    new_ax.set_title(f"new domain ({summary['eval']['new']}): held-out loss", fontsize=9)
    for ax in (old_ax, new_ax):
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    new_ax.legend(fontsize=7)
    return _save(fig, path)
