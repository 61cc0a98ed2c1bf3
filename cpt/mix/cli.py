"""`cpt-mix build STAGE.yaml [--output DIR]`: plan a training stage and write its manifest;
`cpt-mix show MANIFEST`: its table and composition chart."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpt.config import ConfigError
from cpt.io import OutputError, output_lock
from cpt.manifest import STAGE_MANIFEST, ManifestError, read_stage_manifest, write_stage_manifest
from cpt.mix.chart import composition_chart
from cpt.mix.plan import MixError, plan, table
from cpt.mix.stage import load_stage
from cpt.tokens import MANIFEST


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpt-mix", description="Plan training stages from token shards.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser(
        "build",
        help="resolve a stage file to shards and write manifest.json",
        description="Resolve every source of a stage file to its token shards, split the token budget by "
        "weight and replay share, check epochs (counting only the documents of at least min_tokens tokens "
        "where a source sets it) and tokenizers, and write manifest.json (its hash names the data a "
        "checkpoint is trained on).",
    )
    b.add_argument("stage", help="a stage file, e.g. mixes/stage2.yaml")
    b.add_argument("--output", help="folder for manifest.json (default: runs/mixes/<stage name>)")
    b.add_argument("--dry-run", action="store_true", help="print the plan without writing the manifest")
    show = sub.add_parser(
        "show",
        help="print a manifest's table and draw its composition (PNG)",
        description="Print the table of a built manifest and write a chart of its composition: each "
        "source's share of the budget (replay hatched) and how many epochs it is read.",
    )
    show.add_argument("manifest", help="a manifest.json or its folder, e.g. runs/mixes/stage2")
    show.add_argument("--chart", help="PNG to write (default: composition.png beside the manifest)")
    args = parser.parse_args(argv)
    if args.command == "show":
        return _show(args.manifest, args.chart)
    try:
        stage = load_stage(args.stage)
        manifest = plan(stage, args.stage)
        output = Path(args.output or Path("runs") / "mixes" / stage.name)
        if not args.dry_run:
            _check_output(output, stage.name)
    except (ConfigError, MixError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that exists but cannot be read (permissions, a folder in its place)
        print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    print(table(manifest))
    if not args.dry_run:
        try:
            with output_lock(output, "cpt-mix build"):
                _check_output(output, stage.name)  # again, now that no other build can write it
                path = write_stage_manifest(manifest, output)
        except (OutputError, MixError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"error: {output}: cannot write the manifest there ({e.strerror})", file=sys.stderr)
            return 2
        print(f"wrote {path}")
    return 0


def _check_output(output: Path, stage: str) -> None:
    """--output is a folder for this stage's manifest: a file, a token-shard folder or a folder holding
    another stage's (or anything else's) manifest.json is refused rather than written into."""
    if output.exists() and not output.is_dir():
        raise MixError(f"--output {output}: a file, not a folder; give a folder for manifest.json")
    if (output / MANIFEST).is_file():
        raise MixError(f"--output {output}: a token-shard folder; give a folder of its own for the manifest")
    existing = output / STAGE_MANIFEST
    if existing.exists():
        try:  # a stage manifest, even a stale or edited one, is what a rebuild replaces
            old = json.loads(existing.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = None
        ours = isinstance(old, dict) and "manifest_hash" in old
        if not ours or old.get("stage") != stage:
            what = (
                f"the manifest of stage {old.get('stage')!r}"
                if ours
                else "a manifest.json that is no stage's"
            )
            raise MixError(
                f"--output {output}: holds {what}; give another folder (this one is left as it is)"
            )


def _show(manifest_path: str, chart: str | None) -> int:
    try:
        manifest = read_stage_manifest(manifest_path, check_shards=False)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(manifest))
    folder = Path(manifest_path) if Path(manifest_path).is_dir() else Path(manifest_path).parent
    print(f"wrote {composition_chart(manifest, chart or folder / 'composition.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
