"""Commands that replace an output folder never delete a folder they did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import shared_data
from cpt.io import OutputError, holds_only, written_dir


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "tokenizer.json").write_text("{}")
    return path


def test_written_dir_replaces_its_own_output_and_refuses_anything_else(tmp_path):
    out = tmp_path / "out"
    with written_dir(out, holds_only("a.txt"), "test") as tmp:
        (tmp / "a.txt").write_text("one")
    with written_dir(out, holds_only("a.txt"), "test") as tmp:  # its own earlier output: replaced
        (tmp / "a.txt").write_text("two")
    assert snapshot(out) == {"a.txt": b"two"}

    (out / "theirs.csv").write_text("data")
    with pytest.raises(OutputError, match="not an earlier test output"):
        with written_dir(out, holds_only("a.txt"), "test"):
            raise AssertionError("never reached: refused before the work")
    assert snapshot(out) == {"a.txt": b"two", "theirs.csv": b"data"}

    with pytest.raises(RuntimeError):  # a failed block leaves the output as it was, and no debris
        with written_dir(tmp_path / "new", holds_only("a.txt"), "test") as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_report_into_one_of_its_input_folders_is_refused_and_deletes_nothing(tmp_path, capsys):
    from cpt.report.cli import main

    run = tmp_path / "clean"
    (run / "report").mkdir(parents=True)
    (run / "report" / "funnel.json").write_text(json.dumps({"steps": [], "pipeline": "clean"}))
    (run / "en").mkdir()
    (run / "en" / "000_00000.parquet").write_bytes(b"shard")
    before = snapshot(run)
    assert main([str(run), "--output", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "choose another --output" in err[0]
    assert snapshot(run) == before


def test_merge_into_a_model_folder_or_its_own_base_is_refused(tmp_path, capsys):
    from cpt.tok.cli import main

    base, add = (
        shared_data("tokenizers", "llama-32k.model"),
        shared_data("tokenizers", "chinese-llama-20k.model"),
    )
    model = model_folder(tmp_path / "model")
    before = snapshot(model)
    assert main(["merge", "--base", str(base), "--add", str(add), "--output", str(model)]) == 2
    assert "choose another --output" in capsys.readouterr().err
    assert snapshot(model) == before

    out = tmp_path / "merged"
    assert main(["merge", "--base", str(base), "--add", str(add), "--output", str(out)]) == 0
    assert (
        main(["merge", "--base", str(base), "--add", str(add), "--output", str(out)]) == 0
    )  # rerun: replaced
    first = snapshot(out)
    assert main(["merge", "--base", str(out), "--add", str(add), "--output", str(out)]) == 2
    assert "is the --base tokenizer's folder" in capsys.readouterr().err
    assert snapshot(out) == first


def test_export_into_the_model_it_started_from_is_refused_before_any_work(tmp_path):
    from trainer.export import export

    model = model_folder(tmp_path / "base")
    before = snapshot(model)
    with pytest.raises(OutputError, match="not an earlier trainer/export.py output"):
        export(tmp_path / "no-such-run", model)  # refused before the run is even read
    assert snapshot(model) == before
