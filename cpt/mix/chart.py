"""The composition chart of a stage manifest (PNG): shares of the budget, and epochs per source."""

from __future__ import annotations

from pathlib import Path

from cpt.io import written_file
from cpt.mix.plan import EPOCH_WARNING


def composition_chart(manifest: dict, path: str | Path) -> Path:
    """Draw the stage's shares (replay hatched) and each source's epochs against the 4-epoch line."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sources = manifest["sources"]
    colors = plt.get_cmap("tab10").colors
    fig, (share_ax, epoch_ax) = plt.subplots(
        2, 1, figsize=(8, 2.2 + 0.35 * len(sources)), height_ratios=[1, max(len(sources), 2)]
    )
    left = 0.0
    for i, s in enumerate(sources):
        share_ax.barh(
            0,
            s["share"],
            left=left,
            color=colors[i % len(colors)],
            hatch="//" if s["role"] == "replay" else None,
            edgecolor="white",
        )
        if s["share"] >= 0.06:
            label = f"{s['name']}\n{s['share']:.0%}" + (" replay" if s["role"] == "replay" else "")
            share_ax.text(left + s["share"] / 2, 0, label, ha="center", va="center", fontsize=8)
        left += s["share"]
    share_ax.set_xlim(0, 1)
    share_ax.set_yticks([])
    anneal = manifest.get("anneal_tokens")
    anneal = f" (the LR anneals to 0 over its last {anneal:,})" if anneal else ""
    share_ax.set_xlabel(f"share of the stage's tokens{anneal}")
    share_ax.set_title(
        f"stage {manifest['stage']}: {manifest['tokens']:,} tokens, seq_len {manifest['seq_len']}, "
        f"replay {manifest['replay']['share']:.0%}  (manifest {manifest['manifest_hash'][:12]})",
        fontsize=9,
    )

    # a long-context source says how long its documents are: its epochs count only those
    names = [
        s["name"] + (f"\n(documents ≥ {s['min_tokens']:,} tokens)" if s.get("min_tokens") else "")
        for s in sources
    ][::-1]
    epochs = [s["epochs"] for s in sources][::-1]
    bar_colors = [colors[i % len(colors)] for i in range(len(sources))][::-1]
    epoch_ax.barh(names, epochs, color=bar_colors)
    epoch_ax.axvline(EPOCH_WARNING, color="red", linestyle="--", linewidth=1)
    epoch_ax.text(EPOCH_WARNING, len(names) - 0.5, " 4 epochs", color="red", fontsize=7, va="top")
    epoch_ax.set_xlim(0, max(EPOCH_WARNING * 1.1, max(epochs) * 1.1))
    epoch_ax.set_xlabel("epochs (times each source is read)")
    fig.tight_layout()

    path = Path(path)
    with written_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")  # the temporary name's suffix says nothing of the format
    plt.close(fig)
    return path
