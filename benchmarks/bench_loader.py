"""Packed tokens/second of one loader process, and its memory, on corpora of 1x, 10x and 100x the size.

    python benchmarks/bench_loader.py [--base-tokens 10000000] [--sequences 4000] [--json OUT]

Builds synthetic token shards (uint16, log-normal document lengths: web ~700 tokens, instruction
~400) for three sources at each scale, plans a stage over them (web `concat` 3 : instruction
`same_type` 1, 25% replay), then in a fresh process per scale reads `--sequences` packed sequences of
4096 tokens through `PackedLoader` (one process, no workers) and reports tokens/s, the time to the
first batch from a fresh start and from a mid-stage state (a seek), and peak memory: VmHWM (resident,
mapped shard pages included) and anonymous memory (what the loader itself allocates). All scales
run in one invocation, so their ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpt.tokens import write_manifest  # noqa: E402

SEQ_LEN = 4096
FILE_TOKENS = 50_000_000  # tokens per shard file, as a tokenize task would write


def write_source(folder: Path, tokens: int, mean_len: int, tokenizer: Path, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    left, n = tokens, 0
    while left > 0:
        size = min(left, FILE_TOKENS)
        lengths = np.clip(rng.lognormal(np.log(mean_len) - 0.5, 1.0, size // mean_len * 2), 8, 60_000)
        lengths = lengths.astype(np.int64)
        ends = np.cumsum(lengths)
        ends = ends[ends < size]
        ends = np.append(ends, size).astype(np.uint64)
        rng.integers(3, 32_000, size, dtype=np.uint16).tofile(folder / f"{n:05d}_unshuffled.ds")
        ends.tofile(folder / f"{n:05d}_unshuffled.ds.index")
        left, n = left - size, n + 1
    write_manifest(folder, folder.name, tokenizer, 2)


def build_corpus(root: Path, tokens: int) -> Path:
    from cpt.manifest import write_stage_manifest
    from cpt.mix.plan import plan
    from cpt.mix.stage import Replay, Source, Stage

    tokenizer = root / "tokenizer.json"
    root.mkdir(parents=True)
    tokenizer.write_text('{"model": "bench"}')
    write_source(root / "web", tokens * 6 // 10, 700, tokenizer, 1)
    write_source(root / "instruct", tokens * 2 // 10, 400, tokenizer, 2)
    write_source(root / "old", tokens * 2 // 10, 700, tokenizer, 3)
    stage = Stage(
        name="bench",
        seq_len=SEQ_LEN,
        tokens=tokens * 2,  # two passes over the corpus (the replay source 2.5 epochs)
        seed=0,
        sources=[
            Source(name="web", path=str(root / "web"), weight=3.0),
            Source(name="instruct", path=str(root / "instruct"), weight=1.0, packing="same_type", type="sft"),
        ],
        replay=Replay(share=0.25, sources=[Source(name="old", path=str(root / "old"))]),
    )
    write_stage_manifest(plan(stage), root / "mix")
    return root / "mix" / "manifest.json"


def memory() -> dict:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024  # MiB
    return fields


def child(manifest_path: str, sequences: int, batch_size: int, world: int) -> dict:
    """One loader process: fresh start, throughput, then a seek to a mid-stage state."""
    from cpt.data import PackedLoader, initial_state
    from cpt.data.loader import sequences_per_source
    from cpt.data.order import Interleave
    from cpt.manifest import read_stage_manifest

    manifest = read_stage_manifest(manifest_path)
    base = memory()
    start = time.perf_counter()
    loader = PackedLoader(manifest, rank=0, world=world, batch_size=batch_size)
    batches = iter(loader)
    next(batches)
    first = time.perf_counter() - start
    tokens, t0 = 0, time.perf_counter()
    for _ in range(sequences // batch_size):
        batch = next(batches)
        tokens += batch["input_ids"].numel()
    elapsed = time.perf_counter() - t0

    # a mid-stage state: half the stage taken, every source half-way through its documents
    counts = sequences_per_source(manifest)
    schedule = Interleave(counts)
    for _ in range(sum(counts) // 2):
        schedule.next()
    state = initial_state(manifest)
    state["sequences"] = sum(schedule.done)
    for source, done, entry in zip(state["sources"], schedule.done, manifest["sources"], strict=True):
        documents = sum(f["documents"] for f in entry["files"])
        source.update(sequences=done, document=documents // 2)
    resumed = PackedLoader(manifest, rank=0, world=world, batch_size=batch_size)
    t0 = time.perf_counter()
    resumed.load_state_dict(state)
    next(iter(resumed))
    seek = time.perf_counter() - t0
    return {
        "tokens_per_s": tokens / elapsed,
        "first_batch_s": first,
        "seek_first_batch_s": seek,
        "memory_mib": memory(),
        "memory_before_mib": base,
        "world": world,
    }


def run_child(manifest: Path, sequences: int, batch_size: int, world: int) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", str(manifest), "--sequences", str(sequences),
         "--batch-size", str(batch_size), "--world", str(world)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        sys.exit(f"loader process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-tokens", type=int, default=10_000_000, help="tokens of the 1x corpus")
    parser.add_argument("--scales", default="1,10,100", help="corpus sizes, as multiples of the base")
    parser.add_argument("--sequences", type=int, default=4000, help="sequences read per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sequences, args.batch_size, args.world)))
        return

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        for scale in (int(s) for s in args.scales.split(",")):
            root = Path(tmp) / f"x{scale}"
            t0 = time.perf_counter()
            manifest = build_corpus(root, args.base_tokens * scale)
            built = time.perf_counter() - t0
            for world in (1, 8):
                r = run_child(manifest, args.sequences // world, args.batch_size, world)
                r.update(scale=scale, corpus_tokens=args.base_tokens * scale, build_s=built)
                results.append(r)
                m = r["memory_mib"]
                print(
                    f"{scale:>4}x ({args.base_tokens * scale / 1e6:,.0f}M tokens) world {world}: "
                    f"{r['tokens_per_s'] / 1e6:,.1f}M packed tokens/s, first batch {r['first_batch_s']:.2f} s, "
                    f"seek {r['seek_first_batch_s']:.2f} s, peak RSS {m['VmHWM']:,.0f} MiB "
                    f"(anonymous {m['RssAnon']:,.0f}, file-backed {m['RssFile']:,.0f})",
                    flush=True,
                )
            for path in sorted(root.glob("*/*.ds")):  # keep the disk free for the next scale
                path.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
