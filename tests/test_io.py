"""Commands that replace an output folder never delete a folder they did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CHINESE_LLAMA, SENTENCEPIECE_BASE, data_path
from cpt.io import (
    JsonFileError,
    OutputError,
    holds_only,
    read_json,
    write_json,
    write_text,
    written_dir,
    written_file,
)


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
        data_path(*SENTENCEPIECE_BASE),
        data_path(*CHINESE_LLAMA),
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


def test_written_file_gets_the_mode_a_plain_open_would_give(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        write_text(tmp_path / "whole.txt", "x")
        with written_file(tmp_path / "any.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    # mkstemp alone would give 0600: another user's reader (the loader, a report) could not open it
    assert modes == {"plain.txt": 0o644, "whole.txt": 0o644, "any.bin": 0o644}


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out" / "funnel.json"
    write_json(path, {"kept": 1})
    before = path.read_bytes()
    with pytest.raises(RuntimeError), written_file(path) as tmp:
        tmp.write_text("half a fil")
        raise RuntimeError("killed mid-write")
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["funnel.json"]


def test_write_json_is_readable_utf8_with_a_final_newline(tmp_path):
    path = tmp_path / "new" / "folder" / "data.json"  # its folders are made
    write_json(path, {"lang": "中文", "n": [1, 2]})
    assert path.read_bytes() == '{\n  "lang": "中文",\n  "n": [\n    1,\n    2\n  ]\n}\n'.encode()
    write_json(path, {"a": 1}, indent=None)
    assert path.read_bytes() == b'{"a": 1}\n'
    assert read_json(path) == {"a": 1}


def test_read_json_names_the_file_it_cannot_read(tmp_path):
    bad = tmp_path / "tokens.json"
    bad.write_text('{"files": [', encoding="utf-8")
    with pytest.raises(JsonFileError, match=r"tokens\.json: not valid JSON"):
        read_json(bad)
    bad.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(JsonFileError, match=r"tokens\.json: not valid JSON"):
        read_json(bad)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "missing.json")


# -- one writer per output ---------------------------------------------------------------------------
HOLD = "import sys, time; from cpt.io import output_lock; held = output_lock(sys.argv[1], 'a holder'); held.__enter__(); print('held', flush=True); time.sleep(600)"  # noqa: E501


@pytest.fixture
def held_output(tmp_path):
    """An output folder whose lock another process holds (as a running command would); its pid."""
    import subprocess
    import sys

    from conftest import REPO

    output = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(output)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        yield output, holder
    finally:
        holder.kill()
        holder.wait()


def _commands(output: Path, tmp: Path) -> dict[str, list[str]]:
    """Every command that writes a folder and takes its lock before reading its inputs (those that
    check their inputs first, the trainer and `cpt-mix build`, are tried where their inputs are built)."""
    import sys

    py, nothing = sys.executable, str(tmp / "nothing")
    run_py = [py, "pipelines/run.py"]
    return {
        "clean": [*run_py, "clean", "--input", nothing, "--output", str(output)],
        "dedup": [*run_py, "dedup", "--input", nothing, "--output", str(output)],
        "score": [*run_py, "score", "--input", nothing, "--output", str(output)],
        "tokenize": [
            *run_py,
            "tokenize",
            "--input",
            nothing,
            "--tokenizer",
            nothing,
            "--output",
            str(output),
        ],
        "cpt-tok train": [py, "-m", "cpt.tok.cli", "train", "--input", nothing, "--output", str(output)],
        "cpt-tok merge": [
            py,
            "-m",
            "cpt.tok.cli",
            "merge",
            "--base",
            nothing,
            "--add",
            nothing,
            "--output",
            str(output),
        ],  # fmt: skip
        "cpt-tok init-embeddings": [
            py,
            "-m",
            "cpt.tok.cli",
            "init-embeddings",
            "--model",
            nothing,
            "--base-tokenizer",
            nothing,
            "--tokenizer",
            nothing,
            "--output",
            str(output),
        ],  # fmt: skip
        "export": [py, "trainer/export.py", "--checkpoint", nothing, "--output", str(output)],
        "cpt eval": [
            py,
            "-m",
            "trainer.cli",
            "eval",
            "--model",
            nothing,
            "--tasks",
            "mmlu",
            "--data",
            nothing,
            "--output",
            str(output),
        ],  # fmt: skip
        "cpt report": [py, "-m", "trainer.cli", "report", nothing, "--output", str(output)],
        "cpt ablate": [py, "-m", "trainer.cli", "ablate", "--grid", nothing, "--output", str(output)],
    }


def test_a_second_command_on_a_held_output_is_refused_naming_the_holder(held_output, tmp_path):
    import socket
    import subprocess

    from conftest import REPO

    output, holder = held_output
    for name, argv in _commands(output, tmp_path).items():
        proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, (name, proc.stderr[-2000:])
        assert (
            f"another command is writing it (a holder, pid {holder.pid} on {socket.gethostname()})"
            in errors[0]
        ), (
            name,
            errors,
        )
        assert "Traceback" not in proc.stderr, name
    assert [p.name for p in output.iterdir()] == [".cpt.lock"]  # the holder's; nothing else was written


def test_the_lock_goes_with_its_holder_however_it_ends(held_output):
    from cpt.io import lock_path, output_lock

    output, holder = held_output
    with pytest.raises(OutputError, match="another command is writing it"):
        with output_lock(output, "second"):
            pass
    holder.kill()  # SIGKILL: no clean-up ran
    holder.wait()
    with output_lock(output, "third"):  # the kernel released it
        assert json.loads(lock_path(output).read_text())["command"] == "third"
    assert not list(output.iterdir())  # the lock file is removed by whoever held it last
    with output_lock(output, "fourth"):  # and a clean exit released it
        pass


def test_a_lock_leaves_a_folder_it_did_not_make_as_it_found_it(tmp_path):
    from cpt.io import output_lock

    mine = model_folder(tmp_path / "model")
    before = snapshot(mine)
    with pytest.raises(OutputError, match="refused after locking"):
        with output_lock(mine, "a command pointed at the wrong folder"):
            raise OutputError("refused after locking")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == sorted(before)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file: a file, not a folder"):
        with output_lock(tmp_path / "file", "x"):
            pass
