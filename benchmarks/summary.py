"""One table of every ratio the benchmarks measured: cpt against the tool a user would otherwise run.

    python benchmarks/summary.py runs/bench/*.json [--markdown OUT]

Each benchmark's `--json` output carries a `ratios` list ({figure, cpt, reference, reference_name,
ratio, goal, command}); each ratio was measured side by side in one run of its benchmark. A file
without one (or not a benchmark's output) is named on stderr and skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            print(f"{path}: skipped, not readable as JSON ({e})", file=sys.stderr)
            continue
        ratios = data.get("ratios") if isinstance(data, dict) else None
        if not isinstance(ratios, list):
            print(f"{path}: skipped, no `ratios` list", file=sys.stderr)
            continue
        for r in ratios:
            rows.append({**r, "file": path.name})
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(rows: list[dict]) -> str:
    lines = [
        "| figure | cpt | reference | against | ratio | goal | met |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        goal = r.get("goal")
        ratio = r.get("ratio")
        try:
            target = float(str(goal).lstrip(">= ")) if goal is not None else None
        except ValueError:
            target = None
        met = "-" if target is None or ratio is None else ("yes" if ratio >= target else "**no**")
        lines.append(
            f"| {r.get('figure', '?')} | {_fmt(r.get('cpt'))} | {_fmt(r.get('reference'))} "
            f"| {r.get('reference_name', '-')} | {_fmt(ratio)}x | {_fmt(goal)} | {met} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="benchmark outputs (their --json files)")
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    args = parser.parse_args()
    rows = load_rows(args.json)
    if not rows:
        print("error: no ratios in " + ", ".join(map(str, args.json)), file=sys.stderr)
        return 2
    text = table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
