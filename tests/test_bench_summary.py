"""benchmarks/summary.py: the one table `make bench` prints from the benchmarks' JSON outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def summary(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "benchmarks/summary.py", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_one_row_a_ratio_with_goals_met_or_not_and_unreadable_files_named(tmp_path):
    row = {"reference_name": "ref", "command": "python benchmarks/x.py"}
    (tmp_path / "a.json").write_text(
        json.dumps(
            {"ratios": [{**row, "figure": "fast", "cpt": 3.0, "reference": 2.0, "ratio": 1.5, "goal": 1.0}]}
        )
    )
    (tmp_path / "b.json").write_text(
        json.dumps(
            {"ratios": [{**row, "figure": "slow", "cpt": 1, "reference": 2, "ratio": 0.5, "goal": ">= 1.0"}]}
        )
    )
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "d.json").write_text(json.dumps({"figures": 1}))
    files = sorted(str(p) for p in tmp_path.glob("*.json"))
    proc = summary(*files, "--markdown", str(tmp_path / "table.md"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4  # header, rule, two rows
    assert "| fast |" in lines[2] and lines[2].endswith("| yes |")
    assert "| slow |" in lines[3] and lines[3].endswith("| **no** |")
    assert "c.json: skipped" in proc.stderr and "d.json: skipped, no `ratios` list" in proc.stderr
    assert (tmp_path / "table.md").read_text() == proc.stdout

    none = summary(str(tmp_path / "c.json"))
    assert none.returncode == 2 and none.stderr.strip().splitlines()[-1].startswith("error: no ratios")
