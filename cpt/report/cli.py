"""`cpt report RUN_DIRS... --output runs/report/`: the static HTML report."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders",
        nargs="+",
        metavar="RUN_DIR",
        help="folders to search for pipeline funnels, stage manifests, tokenizer comparisons, training "
        "runs and ablations (e.g. runs/demo runs/mixes)",
    )
    parser.add_argument("--output", default="runs/report", help="folder for index.html (default runs/report)")
    parser.add_argument("--title", default="cpt report", help="the page's title")


def run(args: argparse.Namespace) -> int:
    from cpt.io import OutputError, output_lock
    from cpt.report.collect import ReportError
    from cpt.report.page import write_report

    try:
        with output_lock(args.output, "cpt report"):
            page = write_report(args.folders, args.output, args.title)
    except (ReportError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {page} (open it in a browser; it needs no server)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpt report", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
