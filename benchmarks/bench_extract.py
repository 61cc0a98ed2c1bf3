"""Quality and speed of HTML extraction: trafilatura 2.x, trafilatura 1.11 and resiliparse on public sets.

    python benchmarks/bench_extract.py --scrapinghub SCRAPINGHUB_DIR --trafilatura-eval TRAFILATURA_DIR \\
        [--trafilatura-1-python TRAFILATURA_1_PYTHON] [--limit N] [--repeats 1] [--json OUT]

Datasets (each DIR is a checkout, or a bare git repository read at the pinned commit; no page is
copied into this repository):

- ScrapingHub's article-extraction-benchmark (SCRAPINGHUB_DIR: github.com/scrapinghub/
  article-extraction-benchmark, ground-truth.json + html/<id>.html.gz, 181 pages): token precision,
  recall and F1 of the extracted text against each page's articleBody.
  Tokens are whitespace-separated runs, with every CJK character a token of its own; each page's
  bag of tokens is compared with the truth's as the benchmark's evaluate.py compares its shingles
  (counts matched with multiplicity, normalised per page so that long pages do not weigh more;
  precision and recall are means over pages, F1 their harmonic mean). The JSON also holds
  evaluate.py's own figure (4-token shingles of `\\w+` tokens), comparable with published ones.
- trafilatura's evaluation set (TRAFILATURA_DIR: github.com/adbar/trafilatura, tests/evaldata.json
  + tests/eval/, 990 pages): scored as its tests/eval_common.py does: a "with" snippet found in the output (whitespace-normalised) is a
  true positive, missing a false negative; a "without" snippet found is a false positive; counts
  summed over all pages.

Extractors, all on the same decoded pages (cpt's `decode_payload`, as the WARC reader decodes):
- `trafilatura (cpt)`: cpt's TrafilaturaExtractor with pipelines/configs/clean.yaml's settings
  (favour_precision, no tables, deduplicate with the cache emptied before every page, and the fallback
  for a page they leave empty: without deduplicate, with tables); `(cpt, no fallback)` without it;
- `trafilatura (defaults)`: `trafilatura.extract(html)` with the library's defaults;
- the same two with trafilatura 1.11 (what datatrove's `processing` extra allows), run by a small
  worker in TRAFILATURA_1_PYTHON (the python of a venv with `pip install trafilatura==1.11.0
  lxml_html_clean`), with the keyword arguments cpt's extractor passes (checked against cpt's own
  output under 2.x first);
- `resiliparse (cpt)`: cpt's ResiliparseExtractor (`extract.backend=resiliparse`).

Pages/s are pages over the CPU time of the extracting process (each extractor is single-threaded),
so other work on the machine does not change them much; best of `--repeats` passes. Extraction runs
in-process, without cpt's sandbox child (whose cost bench_clean.py measures). A page whose extractor
raises counts as empty output.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCRAPINGHUB_COMMIT = "4a3bc979f76c0df73cb95fe272e2fc1b96f9f010"
TRAFILATURA_EVAL_COMMIT = "e90b0ef51ab026fdb905fb6c5b3c84dd3d784fd5"

# Runs in the other interpreter (trafilatura 1.11) and, for the cross-check, in this one: reads
# {"pages": [...], "modes": {name: {"kwargs": {...}, "reset_lru": bool}}, "repeats": n} from the
# file in argv[1], writes {"version", "results": {name: {"texts", "cpu_s"}}} to argv[2].
WORKER = r"""
import json, sys, time
import trafilatura
from trafilatura import extract
from trafilatura.deduplication import LRU_TEST

job = json.load(open(sys.argv[1], encoding="utf-8"))
results = {}
for name, mode in job["modes"].items():
    if job["pages"]:  # first-call set-up (lazy imports, tables) outside the timing
        extract(job["pages"][0], **mode["kwargs"])
    best, texts = None, None
    for _ in range(job["repeats"]):
        out, cpu = [], 0.0
        for html in job["pages"]:
            if mode["reset_lru"]:
                LRU_TEST.clear()
            t0 = time.process_time()
            try:
                text = extract(html, **mode["kwargs"]) or ""
            except Exception:
                text = ""
            cpu += time.process_time() - t0
            out.append(text)
        best = cpu if best is None else min(best, cpu)
        texts = texts or out
    results[name] = {"texts": texts, "cpu_s": best}
json.dump({"version": trafilatura.__version__, "results": results}, open(sys.argv[2], "w", encoding="utf-8"))
"""

# -- datasets -----------------------------------------------------------------------------------------


def materialise(source: Path, commit: str, paths: list[str], work: Path) -> Path:
    """A folder holding `paths` of `source`: the folder itself, or a bare repo's files at `commit`."""
    if (source / paths[0]).exists():
        return source
    out = work / source.name
    out.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(source), "archive", "--format=tar", commit, *paths],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(out, filter="data")
    return out


def decode(payload: bytes) -> str:
    from cpt.steps.read import decode_payload

    return decode_payload(payload) or payload.decode("utf-8", "replace")


def load_scrapinghub(folder: Path, limit: int | None) -> tuple[list[str], list[str], list[str]]:
    """(ids, pages, articleBody texts), sorted by id."""
    truth = json.loads((folder / "ground-truth.json").read_text(encoding="utf-8"))
    ids = sorted(truth)[:limit]
    pages = [decode(gzip.decompress((folder / "html" / f"{i}.html.gz").read_bytes())) for i in ids]
    return ids, pages, [truth[i].get("articleBody") or "" for i in ids]


def load_trafilatura_eval(folder: Path, limit: int | None) -> tuple[list[str], list[str], list[dict], int]:
    """(urls, pages, annotations, entries skipped because their file is absent), sorted by URL."""
    evaldata = json.loads((folder / "tests" / "evaldata.json").read_text(encoding="utf-8"))
    urls, pages, items, missing = [], [], [], 0
    for url in sorted(evaldata):
        item = evaldata[url]
        path = next(
            (p for p in (folder / "tests" / d / item["file"] for d in ("cache", "eval")) if p.is_file()), None
        )
        if path is None:
            missing += 1
            continue
        urls.append(url)
        pages.append(decode(path.read_bytes()))
        items.append(item)
    return urls[:limit], pages[:limit], items[:limit], missing


# -- scoring ------------------------------------------------------------------------------------------

_CJK = "\u3001-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_TOKEN_RE = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_WORD_RE = re.compile(r"\w+", re.UNICODE | re.MULTILINE | re.IGNORECASE | re.DOTALL)  # evaluate.py's


def tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text or "")


def _shingles(text: str, n: int) -> list[tuple[str, ...]]:
    words = _WORD_RE.findall(text or "")
    return [s for i in range(max(1, len(words) - n + 1)) if (s := tuple(words[i : i + n]))]


def bag_match(true: list, pred: list) -> tuple[float, float, float]:
    """(tp, fp, fn) of two bags, normalised to sum 1 (evaluate.py's string_shingle_matching)."""
    t, p = Counter(true), Counter(pred)
    tp = sum(min(t[k], p[k]) for k in t.keys() & p.keys())
    fp, fn = sum(p.values()) - tp, sum(t.values()) - tp
    s = tp + fp + fn
    return (tp / s, fp / s, fn / s) if s else (0.0, 0.0, 0.0)


def _precision(tp, fp, fn):
    return 1.0 if fp == fn == 0 else 0.0 if tp == fp == 0 else tp / (tp + fp)


def _recall(tp, fp, fn):
    return 1.0 if fp == fn == 0 else 0.0 if tp == fn == 0 else tp / (tp + fn)


def mean_prf(counts: list[tuple[float, float, float]]) -> dict:
    """evaluate.py's metrics_from_tp_fp_fns: mean precision and recall over pages, F1 of the two."""
    p = statistics.mean(_precision(*c) for c in counts if c[0] + c[1] > 0)
    r = statistics.mean(_recall(*c) for c in counts if c[0] + c[2] > 0)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def score_scrapinghub(truths: list[str], texts: list[str]) -> dict:
    out = mean_prf([bag_match(tokens(t), tokens(x)) for t, x in zip(truths, texts, strict=True)])
    shingle = mean_prf(
        [bag_match(_shingles(t, 4), _shingles(x, 4)) for t, x in zip(truths, texts, strict=True)]
    )
    out["evaluate_py_shingle4"] = shingle
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def score_snippets(items: list[dict], texts: list[str]) -> dict:
    """trafilatura's eval_common.count_item / ConfusionMatrix, summed over pages."""
    tp = fp = fn = tn = 0
    for item, text in zip(items, texts, strict=True):
        res = _norm(text)
        t = sum(_norm(w) in res for w in item["with"])
        f = sum(_norm(w) in res for w in item["without"])
        tp, fp, fn, tn = tp + t, fp + f, fn + len(item["with"]) - t, tn + len(item["without"]) - f
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


# -- extractors ---------------------------------------------------------------------------------------


def cpt_extractors() -> dict:
    """The extract step's two backends, configured by pipelines/configs/clean.yaml."""
    from cpt.steps.extract import make_extractor
    from pipelines.clean import load_config

    e = load_config().extract
    make = {
        b: make_extractor(
            b, e.favour_precision, e.include_tables, e.max_chars, e.cpu_timeout, fallback=e.fallback
        )
        for b in ("trafilatura", "resiliparse")
    }
    plain = make_extractor("trafilatura", e.favour_precision, e.include_tables, e.max_chars, e.cpu_timeout,
                           fallback=False)  # fmt: skip
    return {
        "default_backend": e.backend,
        "trafilatura": make["trafilatura"],
        "trafilatura_no_fallback": plain,
        "resiliparse": make["resiliparse"],
    }


def page_text(extract_page):
    """The text of cpt's `_extract_page` (which marks a page kept through the fallback as a pair)."""

    def text(html: str) -> str:
        out = extract_page(html)
        return out[1] if isinstance(out, tuple) else out

    return text


def trafilatura_modes(traf_extractor) -> dict:
    """Worker modes: the keyword arguments cpt's extractor passes to trafilatura.extract, and the defaults."""
    kwargs = dict(
        favor_precision=traf_extractor.favour_precision,
        include_comments=False,  # what datatrove's Trafilatura.extract passes
        deduplicate=traf_extractor.deduplicate,
        **traf_extractor.kwargs,
    )
    return {
        "trafilatura (cpt)": {"kwargs": kwargs, "reset_lru": True},
        "trafilatura (defaults)": {"kwargs": {}, "reset_lru": False},
    }


def run_in_process(fn, pages: list[str], repeats: int) -> dict:
    if pages:  # first-call set-up outside the timing, as in the worker
        fn(pages[0])
    best, texts = None, None
    for _ in range(repeats):
        out, cpu = [], 0.0
        for html in pages:
            t0 = time.process_time()
            try:
                text = fn(html) or ""
            except Exception:  # noqa: BLE001 - a crash is an empty extraction, as in both harnesses
                text = ""
            cpu += time.process_time() - t0
            out.append(text)
        best = cpu if best is None else min(best, cpu)
        texts = texts or out
    return {"texts": texts, "cpu_s": best}


def run_worker(python: str, pages: list[str], modes: dict, repeats: int, work: Path) -> dict:
    job, result = work / "job.json", work / "result.json"
    job.write_text(json.dumps({"pages": pages, "modes": modes, "repeats": repeats}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([python, "-c", WORKER, str(job), str(result)], check=True, env=env)
    return json.loads(result.read_text(encoding="utf-8"))


def extract_all(pages: list[str], ext: dict, modes: dict, args, work: Path) -> list[dict]:
    """One row per extractor: backend, version, texts, cpu_s."""
    import trafilatura

    rows = []
    for name, fn in (
        ("trafilatura (cpt)", page_text(ext["trafilatura"]._extract_page)),
        ("trafilatura (cpt, no fallback)", page_text(ext["trafilatura_no_fallback"]._extract_page)),
        ("trafilatura (defaults)", trafilatura.extract),
    ):
        r = run_in_process(fn, pages, args.repeats)
        rows.append({"backend": name, "version": trafilatura.__version__, **r})
    if args.trafilatura_1_python:
        old = run_worker(args.trafilatura_1_python, pages, modes, args.repeats, work)
        rows += [{"backend": n, "version": old["version"], **r} for n, r in old["results"].items()]
    r = run_in_process(ext["resiliparse"].extract, pages, args.repeats)
    rows.append({"backend": "resiliparse (cpt)", "version": metadata.version("resiliparse"), **r})
    return rows


def check_worker_matches_cpt(pages: list[str], ext: dict, modes: dict, work: Path) -> None:
    """The worker's `trafilatura (cpt)` mode, run here, must give cpt's extractor's text exactly."""
    sample = pages[:20]
    mine = run_worker(sys.executable, sample, {"trafilatura (cpt)": modes["trafilatura (cpt)"]}, 1, work)
    theirs = [page_text(ext["trafilatura_no_fallback"]._extract_page)(p) or "" for p in sample]
    if mine["results"]["trafilatura (cpt)"]["texts"] != theirs:
        raise SystemExit("the 1.11 worker's arguments differ from cpt's extractor: fix trafilatura_modes")


# -- main ---------------------------------------------------------------------------------------------


def _command(args) -> str:
    """The command line, with the placeholders of the module docstring for paths outside the repo."""
    parts = ["python benchmarks/bench_extract.py"]
    if args.scrapinghub:
        parts.append("--scrapinghub SCRAPINGHUB_DIR")
    if args.trafilatura_eval:
        parts.append("--trafilatura-eval TRAFILATURA_DIR")
    if args.trafilatura_1_python:
        parts.append("--trafilatura-1-python TRAFILATURA_1_PYTHON")
    if args.limit:
        parts.append(f"--limit {args.limit}")
    parts.append(f"--repeats {args.repeats}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--scrapinghub", type=Path, help="article-extraction-benchmark checkout or bare repo")
    parser.add_argument(
        "--scrapinghub-commit", default=SCRAPINGHUB_COMMIT, help="commit read from a bare repo"
    )
    parser.add_argument("--trafilatura-eval", type=Path, help="trafilatura checkout or bare repo (tests/)")
    parser.add_argument("--trafilatura-eval-commit", default=TRAFILATURA_EVAL_COMMIT)
    parser.add_argument(
        "--trafilatura-1-python", help="python of a venv with trafilatura 1.11 (rows skipped without)"
    )
    parser.add_argument("--limit", type=int, help="first N pages of each dataset (a quick look)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timing passes, best kept (texts of the first)"
    )
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if not (args.scrapinghub or args.trafilatura_eval):
        parser.error("give --scrapinghub and/or --trafilatura-eval")

    ext = cpt_extractors()
    modes = trafilatura_modes(ext["trafilatura"])
    results = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "default_backend": ext["default_backend"],
        "datasets": {},
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        datasets = []
        if args.scrapinghub:
            folder = materialise(
                args.scrapinghub, args.scrapinghub_commit, ["ground-truth.json", "html"], work
            )
            ids, pages, truths = load_scrapinghub(folder, args.limit)
            datasets.append(("scrapinghub", pages, lambda texts, t=truths: score_scrapinghub(t, texts)))
            results["datasets"]["scrapinghub"] = {"commit": args.scrapinghub_commit, "pages": len(ids)}
        if args.trafilatura_eval:
            folder = materialise(args.trafilatura_eval, args.trafilatura_eval_commit, ["tests"], work)
            urls, pages, items, missing = load_trafilatura_eval(folder, args.limit)
            datasets.append(("trafilatura-eval", pages, lambda texts, i=items: score_snippets(i, texts)))
            results["datasets"]["trafilatura-eval"] = {
                "commit": args.trafilatura_eval_commit,
                "pages": len(urls),
                "entries_without_file": missing,
            }
        if args.trafilatura_1_python:
            check_worker_matches_cpt(datasets[0][1], ext, modes, work)
        for name, pages, score in datasets:
            for row in extract_all(pages, ext, modes, args, work):
                texts = row.pop("texts")
                row.update(
                    dataset=name, pages=len(pages), pages_per_s=len(pages) / row["cpu_s"], **score(texts)
                )
                row["empty"] = sum(not t.strip() for t in texts)
                results["rows"].append(row)
                print(f"{name}: {row['backend']} {row['version']}: F1 {row['f1']:.3f}", file=sys.stderr)

    rows = results["rows"]
    default = f"{ext['default_backend']} (cpt)"
    command = _command(args)
    ratios = []
    if args.trafilatura_1_python:
        for name, _, _ in datasets:
            cur = next(r for r in rows if r["dataset"] == name and r["backend"] == default)
            old = next(r for r in rows if r["dataset"] == name and r["backend"] == "trafilatura (cpt)"
                       and r["version"].startswith("1."))  # fmt: skip
            for figure, key, unit in (("F1", "f1", "F1"), ("pages/s", "pages_per_s", "pages/s per core")):
                ratios.append({
                    "figure": f"extraction {figure} ({name}), default backend vs trafilatura 1.11",
                    "cpt": round(cur[key], 4),
                    "reference": round(old[key], 4),
                    "reference_name": "trafilatura 1.11 (cpt settings)",
                    "ratio": round(cur[key] / old[key], 4),
                    "unit": unit,
                    "goal": ">= 1.0",
                    "command": command,
                })  # fmt: skip
    results["ratios"] = ratios

    print("| backend | version | dataset | pages | empty | precision | recall | F1 | pages/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['version']} | {r['dataset']} | {r['pages']} | {r['empty']} | {r['precision']:.3f} "
            f"| {r['recall']:.3f} | {r['f1']:.3f} | {r['pages_per_s']:.1f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
