"""The stage manifest: written by `cpt-mix build`, executed by the loader, named by every checkpoint.

A JSON file (`manifest.json`) holding the resolved sources of one stage with their shards, token
counts, content hashes, shares, epochs and packing, the sequence length, seed and replay plan. Its
`manifest_hash` is the SHA-256 of everything else in it, so it names the data exactly.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cpt.io import JsonFileError, read_json, write_text

STAGE_MANIFEST = "manifest.json"


class ManifestError(ValueError):
    """A manifest that is missing, edited by hand, or whose shards have changed since it was built."""


def manifest_hash(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_stage_manifest(manifest: dict, output: str | Path) -> Path:
    """Write `output/manifest.json` whole (a temporary name, then a rename)."""
    path = Path(output) / STAGE_MANIFEST
    write_text(path, json.dumps(manifest, indent=2) + "\n")  # ASCII-escaped, as manifests always were
    return path


def read_stage_manifest(path: str | Path, check_shards: bool = True) -> dict:
    """Read a manifest (the file or its folder) and check it against itself and, unless told not to,
    its shards: cheaply (sizes, not contents), each must still hold the tokens and documents counted.
    """
    path = Path(path)
    path = path / STAGE_MANIFEST if path.is_dir() else path
    if not path.is_file():
        raise ManifestError(f"{path}: no stage manifest; build one with `cpt-mix build STAGE.yaml`")
    try:
        manifest = read_json(path)
    except OSError as e:
        raise ManifestError(f"{path}: cannot be read ({e.strerror})") from None
    except JsonFileError as e:
        raise ManifestError(str(e)) from None
    if not isinstance(manifest, dict) or "manifest_hash" not in manifest:
        raise ManifestError(
            f"{path}: not a stage manifest (no manifest_hash); build one with `cpt-mix build`"
        )
    if manifest.get("manifest_hash") != manifest_hash(manifest):
        raise ManifestError(f"{path}: its content does not match its manifest_hash (edited by hand?)")
    # The build checked every shard against its tokens.json and recorded what is on disk, so a
    # difference here means the shard changed after the build: rebuilding re-reads the folder.
    for source in manifest["sources"] if check_shards else []:
        for f in source["files"]:
            shard = Path(f["path"])
            for file, size, what in (
                (shard, np.dtype(f["dtype"]).itemsize * f["tokens"], f"{f['tokens']:,} tokens"),
                (Path(f"{shard}.index"), 8 * f["documents"], f"{f['documents']:,} documents"),
            ):
                found = file.stat().st_size if file.is_file() else None
                if found != size:
                    now = (
                        "is missing"
                        if found is None
                        else f"holds {found:,} bytes, not the {size:,} of {what}"
                    )
                    raise ManifestError(f"{path}: {source['name']}: {file} {now}: changed since the build")
    return manifest
