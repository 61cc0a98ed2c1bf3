"""`cpt-mix build` on damaged, incomplete or misnamed token shards and stage files: each probe runs the real
command and expects one `error:` line naming the file and the fix (exit 2), no traceback, and no
manifest written; a folder repaired by re-tokenizing gives a manifest the trainer's loader accepts."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, llama3_tokenizer, run_cli

EOS = "<|end_of_text|>"
REDO = "re-run `run.py tokenize` into a new --output folder"
RESUME = "run the same `run.py tokenize` command again"
STAGE = "name: hostile\nseq_len: 64\ntokens: 2000\nseed: 1\nsources:\n  - {{name: web, path: {path}, weight: 1{extra}}}\n"


def _clean_input(folder: Path, n: int, offset: int = 0) -> Path:
    """A clean-like output: one Parquet shard of `n` English documents."""
    from cpt.shards import CLEAN_SCHEMA

    rows = [
        {
            "id": f"d{i}",
            "text": f"Document {i} tells of rivers, gardens and the morning light, {i * 7} times over. " * 4,
            "url": f"https://example.org/{i}",
            "lang": "en",
            "lang_score": 0.9,
            "source": "test",
            "metadata": None,
        }
        for i in range(offset, offset + n)
    ]
    (folder / "en").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=CLEAN_SCHEMA), folder / "en" / "000_00000.parquet")
    return folder


def _tokenize(clean: Path, output: Path, source: str = "web") -> Path:
    tokenizer = llama3_tokenizer()
    run_cli("tokenize", "--input", str(clean), "--tokenizer", str(tokenizer), "--output", str(output),
            "--source", source, "--eos", EOS, "--no-progress")  # fmt: skip
    return output


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> Path:
    """A real `run.py tokenize` output (Llama 3.2 tokenizer: uint32 shards) of 40 documents."""
    root = tmp_path_factory.mktemp("tokens")
    return _tokenize(_clean_input(root / "clean", 40), root / "web")


def cpt_mix(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cpt.mix.cli", "build", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], proc.stderr


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _index(folder: Path) -> Path:
    return folder / "00000_unshuffled.ds.index"


def _ds(folder: Path) -> Path:
    return folder / "00000_unshuffled.ds"


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _rewrite_index(folder: Path, change) -> None:
    ends = np.fromfile(_index(folder), dtype=np.uint64)
    change(ends)
    ends.tofile(_index(folder))


def _other_tokenizer(folder: Path, tmp: Path) -> None:
    """The folder's tokens.json as a tokenize run with another tokenizer leaves it."""
    from cpt.tokens import write_manifest

    other = tmp / "other-tokenizer" / "tokenizer.json"
    other.parent.mkdir()
    other.write_text(json.dumps(json.loads((llama3_tokenizer() / "tokenizer.json").read_text())))
    write_manifest(folder, "other", other, 4)


def _labelled(folder: Path, tmp: Path) -> None:
    _edit_json(folder / "tokens.json", lambda m: m.update(labels={"topic": "science"}))


# (description, damage done to a copy of the token folder `f` (tmp: the test's folder), what goes
# into the stage's source (path, extra keys) or None for the copy itself, extra build arguments,
# expected exit code, expected text of the one-line error)
PROBES = [
    ("truncated .ds", lambda f, t: _truncate(_ds(f), 1000), None, [], 2,
     "00000_unshuffled.ds: 1,000 bytes, but tokens.json counts"),
    ("truncated .ds (cut mid-token)", lambda f, t: _truncate(_ds(f), 1001), None, [], 2,
     f"cut short or rewritten since tokenize; {REDO}"),
    ("truncated .ds.index", lambda f, t: _truncate(_index(f), 80), None, [], 2,
     "00000_unshuffled.ds.index: 80 bytes, but tokens.json counts 40 documents"),
    ("truncated .ds.index (cut mid-entry)", lambda f, t: _truncate(_index(f), 83), None, [], 2,
     "00000_unshuffled.ds.index: 83 bytes"),
    ("index's last offset is not the .ds size", lambda f, t: _rewrite_index(f, lambda e: e.__setitem__(-1, e[-1] - 3)),
     None, [], 2, "its documents end at token"),
    ("index going backwards", lambda f, t: _rewrite_index(f, lambda e: e.__setitem__(5, e[-1])), None, [], 2,
     "document 6 ends before document 5 (a damaged index)"),
    ("tokens.json counts more tokens", lambda f, t: _edit_json(
        f / "tokens.json", lambda m: [m["files"][0].update(tokens=m["files"][0]["tokens"] + 1), m.update(tokens=m["tokens"] + 1)]),
     None, [], 2, "00000_unshuffled.ds: "),
    ("tokens.json counts fewer documents", lambda f, t: _edit_json(
        f / "tokens.json", lambda m: [m["files"][0].update(documents=39), m.update(documents=39)]),
     None, [], 2, "counts 39 documents"),
    ("tokens.json totals disagree with its files", lambda f, t: _edit_json(f / "tokens.json", lambda m: m.update(tokens=1)),
     None, [], 2, "tokens.json: tokens 1 is not the sum over its files"),
    ("tokens.json lists a missing file", lambda f, t: _edit_json(
        f / "tokens.json", lambda m: m["files"].append({"path": "00001_unshuffled.ds", "tokens": 0, "documents": 0})),
     None, [], 2, "00001_unshuffled.ds: listed in tokens.json but missing"),
    ("a shard tokens.json does not list", lambda f, t: [shutil.copy(_ds(f), f / "00001_unshuffled.ds"),
                                                         shutil.copy(_index(f), f / "00001_unshuffled.ds.index")],
     None, [], 2, "00001_unshuffled.ds: a shard that tokens.json does not list"),
    ("tokens.json lists a file outside its folder", lambda f, t: _edit_json(
        f / "tokens.json", lambda m: m["files"][0].update(path="../web/00000_unshuffled.ds")),
     None, [], 2, "is not the name of a .ds file in this folder"),
    ("tokens.json is not JSON", lambda f, t: (f / "tokens.json").write_text('{"files": ['), None, [], 2,
     "tokens.json: not valid JSON"),
    ("tokens.json is binary", lambda f, t: (f / "tokens.json").write_bytes(bytes(range(256))), None, [], 2,
     "tokens.json: not valid JSON"),
    ("tokens.json is a list", lambda f, t: (f / "tokens.json").write_text("[1, 2]"), None, [], 2,
     "tokens.json: a JSON list, not the object tokenize writes"),
    ("tokens.json lacks files", lambda f, t: _edit_json(f / "tokens.json", lambda m: m.pop("files")), None, [], 2,
     "tokens.json: lacks files"),
    ("tokens.json lacks dtype", lambda f, t: _edit_json(f / "tokens.json", lambda m: m.pop("dtype")), None, [], 2,
     "tokens.json: lacks dtype"),
    ("tokens.json lacks tokenizer_sha256", lambda f, t: _edit_json(f / "tokens.json", lambda m: m.pop("tokenizer_sha256")),
     None, [], 2, "tokens.json: lacks tokenizer_sha256"),
    ("tokens.json has an unknown dtype", lambda f, t: _edit_json(f / "tokens.json", lambda m: m.update(dtype="float8")),
     None, [], 2, "dtype 'float8' is not one of uint16, uint32"),
    ("tokens.json's counts are strings", lambda f, t: _edit_json(
        f / "tokens.json", lambda m: m["files"][0].update(tokens=str(m["files"][0]["tokens"]))),
     None, [], 2, "files[0].tokens"),
    ("tokenize not finished (no tokens.json)", lambda f, t: (f / "tokens.json").unlink(), None, [], 2,
     f"no tokens.json: its tokenize run has not finished; {RESUME}"),
    ("a glob matching an unfinished folder", lambda f, t: [shutil.copytree(f, t / "more" / "web2"),
                                                            (t / "more" / "web2" / "tokens.json").unlink(),
                                                            shutil.copytree(f, t / "more" / "web1")],
     ("{tmp}/more/web*", ""), [], 2, "web2: no tokens.json: its tokenize run has not finished"),
    ("a source folder of another tokenizer", lambda f, t: [shutil.copytree(f, t / "more" / "web1"),
                                                          shutil.copytree(f, t / "more" / "web2"),
                                                          _other_tokenizer(t / "more" / "web2", t)],
     ("{tmp}/more/web*", ""), [], 2, "shards from 2 different tokenizers"),
    ("source path does not exist", None, ("{tmp}/nowhere", ""), [], 2, "nowhere: no such folder, so no token shards"),
    ("source path is a file", None, ("{folder}/tokens.json", ""), [], 2, "tokens.json: a file, not a folder"),
    ("a glob that matches nothing", None, ("{tmp}/nope*", ""), [], 2, "nope*: no folder matches it"),
    ("a where that matches no folder", _labelled, ("{tmp}", ", where: 'topic in [math]'"), [], 2,
     "no token shards labelled topic in [math] (found topic: science)"),
    ("a where under a missing folder", None, ("{tmp}/nowhere", ", where: 'topic == math'"), [], 2,
     "nowhere: no such folder"),
    ("a where over a file", None, ("{folder}/tokens.json", ", where: 'topic == math'"), [], 2, "a file, not a folder"),
    ("a where over a broken tokens.json", lambda f, t: (f / "tokens.json").write_text("{"), ("{tmp}", ", where: 'topic == math'"),
     [], 2, "tokens.json: not valid JSON"),
    ("--output is a file", lambda f, t: (t / "out").write_text("mine"), None, ["--output", "{tmp}/out"], 2,
     "a file, not a folder"),
    ("--output is the token folder", None, None, ["--output", "{folder}"], 2, "a token-shard folder"),
    ("--output holds another stage's manifest", lambda f, t: [(t / "out").mkdir(), (t / "out" / "manifest.json").write_text(
        json.dumps({"stage": "stage1", "manifest_hash": "0"}))], None, ["--output", "{tmp}/out"], 2,
     "holds the manifest of stage 'stage1'"),
    ("the stage file is a folder", None, None, ["STAGE=."], 2, "cannot read the file"),
    ("undamaged (the control)", None, None, [], 0, ""),
]  # fmt: skip


@pytest.mark.parametrize(
    "description, damage, source, args, code, expected", PROBES, ids=[p[0] for p in PROBES]
)
def test_build_refuses_bad_token_shards_in_one_line(
    tokenized, tmp_path, description, damage, source, args, code, expected
):
    from cpt.data import PackedLoader

    folder = tmp_path / "web"
    shutil.copytree(tokenized, folder)
    if damage:
        damage(folder, tmp_path)
    path, extra = (str(folder), "") if source is None else source
    stage = tmp_path / "stage.yaml"
    stage.write_text(STAGE.format(path=path.format(tmp=tmp_path, folder=folder), extra=extra))
    output = tmp_path / "mix"
    argv = [a.format(tmp=tmp_path, folder=folder) for a in args if not a.startswith("STAGE=")]
    stage_arg = next((a.removeprefix("STAGE=") for a in args if a.startswith("STAGE=")), str(stage))
    if "--output" not in argv:
        argv += ["--output", str(output)]
    before = _digests(tmp_path)
    proc = cpt_mix(stage_arg, *argv)
    if code == 0:
        assert proc.returncode == 0, proc.stderr
        assert len(list(PackedLoader(output, batch_size=4))) > 0  # the loader takes what the build wrote
        return
    _one_line_error(proc, expected)
    assert _digests(tmp_path) == before  # nothing written, nothing changed


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_damaged_shards_are_refused_then_a_retokenized_folder_rebuilds_to_a_manifest_the_loader_takes(
    tokenized, tmp_path
):
    """The old failure: the build copied tokens.json's counts without looking at the files, the loader
    compared them with the files and called the manifest stale, and every rebuild copied them again."""
    from cpt.data import PackedLoader
    from cpt.manifest import ManifestError

    folder = tmp_path / "web"
    shutil.copytree(tokenized, folder)
    stage = tmp_path / "stage.yaml"
    stage.write_text(STAGE.format(path=folder, extra=""))
    output = tmp_path / "mix"
    assert cpt_mix(str(stage), "--output", str(output)).returncode == 0
    good = (output / "manifest.json").read_bytes()

    _truncate(_ds(folder), _ds(folder).stat().st_size // 2)  # damaged after the build
    with pytest.raises(
        ManifestError, match="00000_unshuffled.ds holds .* bytes, not the .*: changed since the build"
    ):
        PackedLoader(output)
    proc = cpt_mix(
        str(stage), "--output", str(output)
    )  # a rebuild names the file instead of a stale manifest
    _one_line_error(
        proc, f"00000_unshuffled.ds: {_ds(folder).stat().st_size:,} bytes, but tokens.json counts"
    )
    assert REDO in proc.stderr
    assert (output / "manifest.json").read_bytes() == good  # the last good manifest is left as it was

    # the fix the message names: tokenize again into a new folder, point the stage at it, rebuild
    clean = tmp_path / "clean"
    _clean_input(clean, 40)
    fresh = _tokenize(clean, tmp_path / "web-retokenized")
    stage.write_text(STAGE.format(path=fresh, extra=""))
    proc = cpt_mix(str(stage), "--output", str(output))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((output / "manifest.json").read_text())
    assert {Path(f["path"]).parent for f in manifest["sources"][0]["files"]} == {fresh.resolve()}
    batches = list(PackedLoader(output, batch_size=4))
    assert sum(len(b["input_ids"]) for b in batches) == round(2000 / 64)
