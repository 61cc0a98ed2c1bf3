"""`cpt-mix build STAGE.yaml [--output DIR]`: plan a training stage and write its manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cpt.config import ConfigError
from cpt.mix.plan import MixError, plan, table, write_manifest
from cpt.mix.stage import load_stage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpt-mix", description="Plan training stages from token shards.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    b = sub.add_parser(
        "build",
        help="resolve a stage file to shards and write manifest.json",
        description="Resolve every source of a stage file to its token shards, split the token budget by "
        "weight and replay share, check epochs and tokenizers, and write manifest.json (its hash names the "
        "data a checkpoint is trained on).",
    )
    b.add_argument("stage", help="a stage file, e.g. mixes/stage2.yaml")
    b.add_argument("--output", help="folder for manifest.json (default: runs/mixes/<stage name>)")
    b.add_argument("--dry-run", action="store_true", help="print the plan without writing the manifest")
    args = parser.parse_args(argv)
    try:
        stage = load_stage(args.stage)
        manifest = plan(stage, args.stage)
    except (ConfigError, MixError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(manifest))
    if not args.dry_run:
        path = write_manifest(manifest, args.output or Path("runs") / "mixes" / stage.name)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
