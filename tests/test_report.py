"""`cpt ablate` and `cpt report` end to end: a 2-point grid of real trainer runs from one base, then the
HTML report over real clean, dedup, mix, tokenizer and training outputs, opened in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, data_path, missing, run_cli
from cpt.demo.sample_warc import write_sample_warc
from cpt.report.collect import chains, collect, read_metrics
from trainer_setup import SEQ_LEN, build_small_setup

pytestmark = pytest.mark.slow

STEPS = 8


def cpt(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`cpt ARGS` as a user runs it, from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_small_setup(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def ablation(setup):
    """A 2-point grid (constant LR vs re-warm on resume) of 8-step runs from a base first trained on English."""
    root = setup["root"]
    tokens = root / "tokens"
    (root / "base.yaml").write_text(
        f"name: base\nseq_len: {SEQ_LEN}\ntokens: 1000\nseed: 3\n"
        f"sources:\n  - {{name: en_web, path: {tokens / 'en_web'}, weight: 1.0}}\n"
    )
    (root / "cpt.yaml").write_text(
        f"name: cpt\nseq_len: {SEQ_LEN}\ntokens: 1000\nseed: 4\n"
        f"sources:\n  - {{name: zh_web, path: {tokens / 'zh_web'}, weight: 1.0}}\n"
        f"replay:\n  share: 0.25\n  sources:\n    - {{name: en_web, path: {tokens / 'en_web'}}}\n"
    )
    # the runs also take MMLU and CMMLU (one question a subject): the findings are read on accuracy too
    config = root / "train_bench.yaml"
    bench = f"  benchmarks: {{tasks: [mmlu, cmmlu], data: {data_path('benchmarks')}, limit: 1, shots: 0}}\n"
    config.write_text(setup["config"].read_text().replace("eval:\n", "eval:\n" + bench, 1))
    grid = root / "grid.yaml"
    grid.write_text(
        f"name: two\nconfig: {config}\n"
        f"base: {{model: {setup['model']}, stage: {root / 'base.yaml'}, steps: {STEPS}}}\n"
        f"stage: {root / 'cpt.yaml'}\nsteps: {STEPS}\n"
        "eval: {old: en_old, new: zh_new, old_bench: mmlu, new_bench: cmmlu}\n"
        "center: {resume: constant}\naxes: {resume: [constant, rewarm]}\n"
    )
    out = root / "ablate"
    proc = cpt("ablate", "--grid", str(grid), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_ablation_runs_the_grid_from_one_base_and_summarises_it(ablation):
    out, proc = ablation
    summary = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in summary["runs"]] == ["constant", "rewarm"]
    base = read_metrics(out / "base")
    assert max(base) == STEPS
    for r in summary["runs"]:
        metrics = read_metrics(out / r["run"])
        assert max(metrics) == STEPS
        # every run starts from the base's weights: the same held-out losses at step 0
        assert r["old_loss"][0] == pytest.approx(summary["runs"][0]["old_loss"][0], rel=1e-5)
        assert r["forgetting"] == pytest.approx(r["old_loss"][1] - r["old_loss"][0])
        assert r["learning"] == pytest.approx(r["new_loss"][0] - r["new_loss"][1])
        # benchmark accuracy, from the run's own bench/<task>/acc at its first and last step
        assert r["old_acc"] == [metrics[0]["bench/mmlu/acc"], metrics[STEPS]["bench/mmlu/acc"]]
        assert r["new_acc"] == [metrics[0]["bench/cmmlu/acc"], metrics[STEPS]["bench/cmmlu/acc"]]
        assert r["old_acc"][0] == summary["runs"][0]["old_acc"][0]
        assert r["acc_forgetting"] == pytest.approx(r["old_acc"][0] - r["old_acc"][1])
        assert r["acc_learning"] == pytest.approx(r["new_acc"][1] - r["new_acc"][0])
    claims = [f["claim"] for f in summary["findings"]]
    rewarm = "re-warming the LR when resuming on the same data hurts, against holding the LR constant"
    assert claims == [rewarm, rewarm + " (on benchmark accuracy)"]
    assert "re-warming" in proc.stdout and "mmlu acc" in proc.stdout
    assert (out / "report" / "index.html").is_file()


def test_rewarm_and_constant_differ_only_after_the_resume(ablation):
    from trainer.schedule import lr_multiplier

    out, _ = ablation
    held = read_metrics(out / "runs" / "constant")
    warm = read_metrics(out / "runs" / "rewarm")
    half = STEPS // 2
    for step in range(1, half + 1):  # same base, data and schedule up to the stop
        assert warm[step]["loss"] == pytest.approx(held[step]["loss"], rel=1e-5)
        assert warm[step]["lr"] == pytest.approx(held[step]["lr"])
    # after it (peak 3e-3, floor 3e-4, cosine over the 8 steps, warmup 10%): `constant` holds the LR the
    # schedule had reached; `rewarm` is back at the peak (its warmup of 10% of 4 steps is one step), then
    # decays again to the floor
    reached = 3e-3 * lr_multiplier(half, STEPS, "cosine", 0.1, 0.1)
    assert [held[s]["lr"] for s in range(half + 1, STEPS + 1)] == pytest.approx([reached] * half)
    assert warm[half + 1]["lr"] == pytest.approx(3e-3)
    assert warm[STEPS]["lr"] == pytest.approx(3e-4)
    # the restart is planned, and both parts ran with it: the run's config says where and how
    for mode in ("constant", "rewarm"):
        schedule = json.loads((out / "runs" / mode / "config.json").read_text())["schedule"]
        assert schedule["restarts"] == [half] and schedule["restart"] == mode


def test_ablation_skips_finished_runs_when_run_again(ablation, setup):
    out, _ = ablation
    before = (out / "runs" / "rewarm" / "metrics.jsonl").read_text()
    proc = cpt("ablate", "--grid", str(setup["root"] / "grid.yaml"), "--output", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "runs" / "rewarm" / "metrics.jsonl").read_text() == before


def test_ablate_rejects_a_bad_grid_naming_file_and_keys(tmp_path):
    bad = tmp_path / "grid.yaml"
    bad.write_text(
        "name: x\nconfig: c.yaml\nbase: {}\nstage: s.yaml\nsteps: 1\neval: {old: a}\naxes: {speed: [1]}\n"
    )
    proc = cpt("ablate", "--grid", str(bad), "--dry-run")
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith(f"error: {bad}: 5 problems")
    for key in ("axes.speed", "base.model", "eval:", "steps:"):
        assert key in err, err


def test_findings_on_accuracy_read_a_fall_as_forgetting_and_a_rise_as_learning():
    from trainer.ablate import _findings

    def run(replay, lr, old_acc, new_acc):
        return {"params": {"replay": replay, "lr_scale": lr}, "old_acc": old_acc, "new_acc": new_acc,
                "acc_forgetting": old_acc[0] - old_acc[1], "acc_learning": new_acc[1] - new_acc[0]}  # fmt: skip

    center = {"replay": 0.0, "lr_scale": 1.0}
    runs = [run(0.0, 1.0, [0.5, 0.4], [0.25, 0.35]), run(0.2, 1.0, [0.5, 0.48], [0.25, 0.3]),
            run(0.0, 2.0, [0.5, 0.3], [0.25, 0.45])]  # fmt: skip
    found = {f["claim"]: f["reproduced"] for f in _findings(runs, center, on="acc")}
    assert found == {"replay lowers forgetting (on benchmark accuracy)": True,
                     "a higher LR learns more and forgets more (on benchmark accuracy)": True}  # fmt: skip
    runs[1]["acc_forgetting"] = 0.3  # replay forgetting more: the claim fails
    assert not _findings(runs, center, on="acc")[0]["reproduced"]

    # with the standard errors the trainer logs, each change is shown with its own and read against it:
    # 0.1 on two accuracies of standard error 0.05 is within two standard errors of the difference
    for r in runs:
        r["old_acc_stderr"] = r["new_acc_stderr"] = [0.05, 0.05]
    evidence = _findings(runs, center, on="acc")[0]["evidence"]
    assert evidence.startswith("forgetting +0.100 ± 0.071, within noise at replay 0"), evidence
    from cpt.report.collect import change_text

    assert change_text(0.35, 0.06, 0.283, 0.058) == "+0.067 ± 0.083, within noise"  # 60 questions, random
    assert change_text(0.6, 0.02, 0.3, 0.02) == "+0.300 ± 0.028"


def test_ablate_refuses_a_benchmark_the_config_does_not_run(setup, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"name: b\nconfig: {setup['config']}\nbase: {{model: {setup['model']}}}\n"
        f"stage: {setup['root'] / 'cpt.yaml'}\nsteps: 4\n"
        "eval: {old: en_old, new: zh_new, old_bench: mmlu, new_bench: cmmlu}\n"
        "center: {resume: constant}\naxes: {resume: [constant]}\n"
    )
    proc = cpt("ablate", "--grid", str(grid), "--output", str(tmp_path / "out"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "eval.old_bench: `mmlu` is not a task or language of eval.benchmarks" in proc.stderr


def test_shipped_forgetting_grid_varies_each_axis_around_the_center():
    proc = cpt("ablate", "--grid", "mixes/ablations/forgetting.yaml", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names[0] == "replay0.05-lr1x-continue" and len(names) == len(set(names)) == 7
    assert {"replay0-lr1x-continue", "replay0.05-lr2x-continue", "replay0.05-lr1x-constant"} <= set(names)


@pytest.fixture(scope="module")
def project(setup, ablation, tmp_path_factory):
    """Real outputs of every part: clean and dedup of a generated WARC, a tokenizer comparison, the
    setup's stage manifest, and the ablation's runs (a base and the two runs started from it)."""
    root = tmp_path_factory.mktemp("project")
    write_sample_warc(root / "warc" / "sample.warc.gz", seed=1, n_articles=10)
    run_cli("clean", "--input", str(root / "warc"), "--output", str(root / "clean"), "--no-progress")
    run_cli("dedup", "--input", str(root / "clean"), "--output", str(root / "dedup"), "--no-progress")
    tok = subprocess.run(
        [sys.executable, "-m", "cpt.tok.cli", "report", "--tokenizer", str(setup["root"] / "sp"),
         "--tokenizer", str(setup["root"] / "tok"), "--input", str(root / "dedup"),
         "--json", str(root / "tok" / "compression.json")],
        cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    out, _ = ablation
    # cpt eval of the base and of a run's last checkpoint: the before/after table and the continuations
    for name, model in (("base", out / "base"), ("constant", f"{out / 'runs' / 'constant'}:{STEPS}")):
        proc = cpt("eval", "--model", str(model), "--tasks", "mmlu,cmmlu", "--data", str(data_path("benchmarks")),
                   "--shots", "0", "--limit", "1", "--max-new-tokens", "4", "--output", str(root / "eval" / name))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    return [root, setup["root"] / "mix", out / "base", out / "runs", out]


def test_collect_finds_every_part_and_chains_runs_started_from_a_base(project):
    found = collect(project)
    assert {f.get("pipeline") for _, f in found.funnels} == {"clean", "dedup"}
    dedup = next(f for _, f in found.funnels if f["pipeline"] == "dedup")
    assert set(dedup["languages"]) == {"en", "zh"}
    for lang_rows in dedup["languages"].values():
        assert [r["step"] for r in lang_rows] == [s["step"] for s in dedup["steps"]]
    for i, step in enumerate(dedup["steps"]):  # the languages add up to the total
        assert step["docs_in"] == sum(rows[i]["docs_in"] for rows in dedup["languages"].values())
    assert [m["stage"] for _, m in found.manifests] == ["t"]
    assert len(found.ablations) == 1 and len(found.compression) == 1
    assert [p.name for p, _ in found.evals] == ["base", "constant"]
    assert all(e["tasks"]["mmlu"]["n"] == 8 and len(e["continuations"]) == 6 for _, e in found.evals)
    linked = chains(found.runs)
    assert [[r.name for r in c] for c in linked] == [["base", "constant"], ["base", "rewarm"]]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _open(page: Path, screenshot: Path) -> dict:
    """Load the page in headless Chromium: its images that failed to load, console errors, headings."""
    from selenium import webdriver

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height, 16000))
        driver.save_screenshot(str(screenshot))
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        headings = [h.text for h in driver.find_elements("tag name", "h2")]
    finally:
        driver.quit()
    return {"images": images, "errors": errors, "headings": headings}


def test_report_page_opens_in_chromium_with_every_section_and_image(project, tmp_path):
    output = tmp_path / "report"
    proc = cpt("report", *map(str, project), "--output", str(output), timeout=300)
    assert proc.returncode == 0, proc.stderr
    page = output / "index.html"
    assert f"wrote {page}" in proc.stdout
    if _chromium() is None:
        missing("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    seen = _open(page, tmp_path / "report.png")
    assert seen["errors"] == []
    assert seen["headings"] == [
        "Pipeline funnels",
        "Dedup rates per level and language",
        "Mix composition of each stage",
        "Tokenizer compression before and after extension",
        "Training curves across stages",
        "Benchmarks before and after",
        "Forgetting against learning",
    ]
    text = page.read_text(encoding="utf-8")
    assert "Greedy continuations of fixed prompts" in text and "中国的首都是" in text
    assert "mmlu acc (old)" in text and "benchmark acc (start → end)" in text
    # clean, dedup funnels; dedup rates; one stage; tokenizers; two chains; the ablation and its curves
    assert len(seen["images"]) == 9 and all(ok for _, ok in seen["images"]), seen["images"]
    shot = (tmp_path / "report.png").read_bytes()
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 50_000

    # the check can fail: a missing plot is a broken image and a console error
    plot = output / seen["images"][0][0]
    plot.unlink()
    broken = _open(page, tmp_path / "broken.png")
    assert [src for src, ok in broken["images"] if not ok] == [seen["images"][0][0]]
    assert any("ERR_FILE_NOT_FOUND" in e for e in broken["errors"]), broken["errors"]


def test_report_of_nothing_is_a_one_line_error(tmp_path):
    proc = cpt("report", str(tmp_path), "--output", str(tmp_path / "r"))
    assert proc.returncode == 2 and "nothing to report" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = cpt("report", str(tmp_path / "absent"), "--output", str(tmp_path / "r"))
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    assert not (tmp_path / "r").exists()


def _fake_run(folder: Path, needle: bool = True, shape: bool = True, steps: int = 40) -> Path:
    """A run folder as the trainer leaves it: metrics.jsonl (training every step, an evaluation every 20
    with held-out perplexity and, with `needle`, the passkey grid) and run.json (with `shape`: the LR
    anneal over the last 10 steps and a sequence-length ramp at step 16)."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        lines.append({"step": step, "loss": 5 - step / 20, "lr": 1e-3, "tokens_seen": step * 512})
    for n, step in enumerate((0, 20, 40)):
        record = {"step": step, "eval/en_old/ppl": 90.0 - 10 * n, "eval/zh_new/ppl": 300.0 - 50 * n}
        if needle:
            for length in (64, 128, 256):
                for depth in (0, 50, 100):
                    record[f"needle/L{length}/d{depth}"] = 0.25 * n if length > 64 else 1.0
            record["needle/accuracy"] = (1.0 + 2 * 0.25 * n) / 3
        lines.append(record)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    origin = {"stage": "long", "manifest_hash": "ab" * 8, "init_from": None}
    if shape:
        origin["anneal"] = {"tokens": 5120, "first_step": 30, "steps": 10}
        origin["ramps"] = [
            {"first_step": 0, "seq_len": 128, "batch": 4},
            {"first_step": 16, "seq_len": 256, "batch": 2},
        ]
    (folder / "run.json").write_text(json.dumps(origin))
    return folder


@pytest.fixture
def drawn(monkeypatch):
    """Every figure the report draws, by file name, kept open for its texts to be read."""
    from cpt.report import figures

    figs = {}
    save = figures._save

    def keep(fig, path, tight=True):
        figs[path.name] = {
            "texts": [t.get_text() for ax in fig.axes for t in ax.texts],
            "titles": [ax.get_title() for ax in fig.axes],
            "legend": [
                t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
            ],
            "spans": [(p.get_x(), p.get_x() + p.get_width()) for ax in fig.axes[:1] for p in ax.patches],
        }
        return save(fig, path, tight)

    monkeypatch.setattr(figures, "_save", keep)
    return figs


def test_report_draws_the_needle_heat_map_before_and_after_and_marks_the_anneal_and_ramps(tmp_path, drawn):
    from cpt.report.page import write_report

    _fake_run(tmp_path / "runs" / "long")
    page = write_report([tmp_path / "runs"], tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    images = sorted(p.name for p in (tmp_path / "report" / "img").iterdir())
    assert len(images) == 2 and images[1].startswith("02_needle_")
    for name in images:
        assert (tmp_path / "report" / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        f'src="img/{images[1]}"' in text
        and "heat map" in text
        and '<h2 id="needle">Needle in a haystack' in text
    )
    # before and after: the first and the last evaluation, each with its short-context perplexity
    heat = drawn[images[1]]
    assert heat["titles"][:2] == [
        "before (step 0): accuracy 0.33\nheld-out ppl: en_old 90, zh_new 300",
        "after (step 40): accuracy 0.67\nheld-out ppl: en_old 70, zh_new 200",
    ]
    assert (
        heat["texts"].count("1.00") == 3 + 3
        and heat["texts"].count("0.00") == 6
        and heat["texts"].count("0.50") == 6
    )
    assert "<td>before</td><td>0</td><td>0.3333</td><td>90</td><td>300</td>" in text
    assert "<td>after</td><td>40</td><td>0.6667</td><td>70</td><td>200</td>" in text
    # the anneal: shaded over steps 30..40 on the training chart, and said on the page
    train = drawn[images[0]]
    assert "LR anneal to 0" in train["legend"] and (30, 40) in train["spans"]
    assert (
        "LR anneal to 0: the LR decays linearly to zero over steps 30–39" in text and "5,120 tokens" in text
    )
    # the ramps: a labelled line where each length and batch starts
    assert "ramp: seq_len × batch" in train["legend"]
    assert " 128×4" in train["texts"] and " 256×2" in train["texts"]
    assert "from step 16: seq_len 256 × batch 2" in text


def test_report_without_needle_anneal_or_ramps_draws_what_it_did(tmp_path, drawn):
    from cpt.report.page import write_report

    _fake_run(tmp_path / "runs" / "plain", needle=False, shape=False)
    page = write_report([tmp_path / "runs"], tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert [p.name for p in (tmp_path / "report" / "img").iterdir()] == ["01_train_long.png"]
    assert "Needle in a haystack" not in text and 'id="needle"' not in text and "heat map" not in text
    assert "LR anneal" not in text and "ramps (thin lines" not in text and "batch ramp" not in text
    train = drawn["01_train_long.png"]
    assert train["spans"] == [] and not any("anneal" in t or "ramp" in t for t in train["legend"])
    assert not any("×" in t for t in train["texts"])


def test_a_needle_check_run_once_is_one_heat_map(tmp_path, drawn):
    from cpt.report.page import write_report

    run = _fake_run(tmp_path / "runs" / "once", shape=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # the check ran at step 0 only
        if r["step"]:
            for key in [k for k in r if k.startswith("needle/")]:
                del r[key]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_report([tmp_path / "runs"], tmp_path / "report")
    heat = next(v for k, v in drawn.items() if "needle" in k)
    assert heat["titles"][0] == "step 0: accuracy 0.33\nheld-out ppl: en_old 90, zh_new 300"
    assert len(heat["titles"]) == 2 and heat["texts"].count("1.00") == 3  # one panel and its colour bar
