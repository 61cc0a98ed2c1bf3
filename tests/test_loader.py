"""The streaming loader: document masking, packing modes (same-type sources of one type packed together),
even interleaving, sharding and exact resume."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from cpt.data import IGNORE_INDEX, PackedLoader, cu_seqlens
from cpt.data.loader import sequences_per_source
from cpt.data.order import DocumentOrder, Interleave, order_key
from cpt.manifest import ManifestError, read_stage_manifest, write_stage_manifest
from cpt.mix.plan import plan
from cpt.mix.stage import Replay, Source, Stage
from cpt.tokens import write_manifest

SEQ_LEN = 64


def doc_folder(path, base: int, lengths: list[int], tokenizer):
    """Token shards (two files) whose document i is `lengths[i]` copies of token `base + i`."""
    path.mkdir(parents=True)
    half = len(lengths) // 2
    for n, part in enumerate((lengths[:half], lengths[half:])):
        first = 0 if n == 0 else half
        tokens = np.concatenate([np.full(k, base + first + i, np.uint16) for i, k in enumerate(part)])
        tokens.tofile(path / f"{n:05d}_unshuffled.ds")
        np.cumsum(part).astype(np.uint64).tofile(path / f"{n:05d}_unshuffled.ds.index")
    write_manifest(path, path.name, tokenizer, 2)
    return path


@pytest.fixture
def corpus(tmp_path):
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": "test"}')
    rng = np.random.default_rng(0)
    return {
        "zh": (doc_folder(tmp_path / "zh", 1000, rng.integers(1, 150, 200).tolist(), tok)),
        "en": (doc_folder(tmp_path / "en", 3000, rng.integers(1, 90, 300).tolist(), tok)),
        "sft": (doc_folder(tmp_path / "sft", 5000, rng.integers(1, 100, 120).tolist(), tok)),
    }


def stage_manifest(corpus, tokens=40 * SEQ_LEN * 10, seed=3, same_type=True) -> dict:
    sources = [Source(name="zh", path=str(corpus["zh"]), weight=3.0)]
    if same_type:
        sources.append(
            Source(name="sft", path=str(corpus["sft"]), weight=1.0, packing="same_type", type="sft")
        )
    stage = Stage(
        name="t",
        seq_len=SEQ_LEN,
        tokens=tokens,
        seed=seed,
        sources=sources,
        replay=Replay(share=0.25, sources=[Source(name="en", path=str(corpus["en"]))]),
    )
    return plan(stage, "t.yaml")


def all_sequences(manifest, **kw) -> list[dict]:
    loader = PackedLoader(manifest, batch_size=1, **kw)
    return [{k: v[0].numpy() for k, v in b.items()} for b in loader]


def test_document_order_is_a_seeded_permutation():
    for n in (1, 2, 3, 17, 1000, 4097):
        order = DocumentOrder(n, "a")(np.arange(n))
        assert sorted(order.tolist()) == list(range(n))
    a, b = DocumentOrder(1000, "a")(np.arange(1000)), DocumentOrder(1000, "b")(np.arange(1000))
    assert not np.array_equal(a, b) and np.array_equal(a, DocumentOrder(1000, "a")(np.arange(1000)))
    assert np.mean(np.abs(np.diff(a))) > 100  # shuffled, not near-identity


def test_interleave_spreads_every_source_evenly_and_resumes_from_counts():
    counts = [600, 200, 100, 3]
    full = Interleave(counts)
    order = [full.next() for _ in range(len(full))]
    assert Counter(order) == dict(enumerate(counts))
    shares = np.array(counts) / sum(counts)
    for start in range(0, len(order) - 150, 37):
        window = Counter(order[start : start + 150])
        for s in range(3):
            assert abs(window[s] - 150 * shares[s]) <= 2, (start, s, window)
    resumed = Interleave(counts, [order[:400].count(s) for s in range(4)])
    assert [resumed.next() for _ in range(len(order) - 400)] == order[400:]


def test_every_token_is_masked_from_other_documents(corpus):
    manifest = stage_manifest(corpus)
    seqs = all_sequences(manifest)
    assert len(seqs) == round(manifest["tokens"] / SEQ_LEN)
    for s in seqs:
        ids, labels, pos = s["input_ids"], s["labels"], s["position_ids"]
        assert ids.shape == labels.shape == pos.shape == (SEQ_LEN,)
        starts = pos == 0
        # a label is kept only where the token and the one before it sit in the same piece
        assert np.all(labels[starts] == IGNORE_INDEX)
        inside = ~starts
        assert np.all(pos[inside] == pos[np.flatnonzero(inside) - 1] + 1)
        kept = labels != IGNORE_INDEX
        assert np.array_equal(labels[kept], ids[kept])
        # a piece is one document: every token of it is that document's token
        edges = cu_seqlens(pos)
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            assert len(set(ids[a:b].tolist())) == 1


def test_concat_reads_each_document_once_an_epoch_and_same_type_pads_whole_documents(corpus):
    manifest = stage_manifest(corpus)
    names = [s["name"] for s in manifest["sources"]]
    seqs = all_sequences(manifest)
    zh = [s for s in seqs if names[s["source"][0]] == "zh"]
    zh_tokens = np.concatenate([s["input_ids"] for s in zh])
    lengths = np.diff(np.concatenate([[0], np.fromfile(next(corpus["zh"].glob("00000*.index")), np.uint64)]))
    epoch_tokens = sum(f["tokens"] for f in manifest["sources"][0]["files"])
    assert len(zh_tokens) < epoch_tokens  # the budget is under one epoch: no document twice
    seen = Counter(zh_tokens.tolist())
    for i, n in enumerate(lengths.tolist()):
        assert seen.get(1000 + i, 0) in (0, n) or zh_tokens[-1] == 1000 + i  # whole, or the last one cut
    assert all(np.all(s["input_ids"] != 0) for s in zh)  # concat: never padded

    sft = [s for s in seqs if names[s["source"][0]] == "sft"]
    sft_lengths = {}
    for folder_file in sorted(corpus["sft"].glob("*.index")):
        ends = np.fromfile(folder_file, np.uint64)
        sft_lengths.update(
            {len(sft_lengths) + i: int(n) for i, n in enumerate(np.diff(np.concatenate([[0], ends])))}
        )
    padded = 0
    for s in sft:
        pad = s["input_ids"] == 0
        padded += pad.sum()
        assert np.all(s["labels"][pad] == IGNORE_INDEX)
        edges = cu_seqlens(s["position_ids"])
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            if s["input_ids"][a] != 0:  # a real piece holds its whole document, or a cut of a long one
                n = sft_lengths[int(s["input_ids"][a]) - 5000]
                assert b - a == n if n <= SEQ_LEN else b - a in (SEQ_LEN, n % SEQ_LEN)
    assert padded > 0


def test_ranks_split_the_stage_without_repeats_or_gaps(corpus):
    manifest = stage_manifest(corpus)
    single = all_sequences(manifest)
    world = 3
    ranks = [all_sequences(manifest, rank=r, world=world) for r in range(world)]
    per_rank = len(single) // world
    assert all(len(r) == per_rank for r in ranks)
    for k in range(per_rank * world):
        assert np.array_equal(ranks[k % world][k // world]["input_ids"], single[k]["input_ids"])


def test_order_depends_on_seed_only(corpus):
    a = all_sequences(stage_manifest(corpus, seed=3))
    b = all_sequences(stage_manifest(corpus, seed=3))
    c = all_sequences(stage_manifest(corpus, seed=4))
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c, strict=True))


def test_resume_mid_stage_is_exact_across_worker_counts(corpus, tmp_path):
    manifest = stage_manifest(corpus, tokens=40 * SEQ_LEN * 30)  # past one epoch of sft: epochs turn
    write_stage_manifest(manifest, tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    reference = [b["input_ids"].numpy() for b in PackedLoader(path, batch_size=4, workers=0)]
    with_workers = [b["input_ids"].numpy() for b in PackedLoader(path, batch_size=4, workers=2)]
    assert len(reference) == len(with_workers) and all(
        np.array_equal(a, b) for a, b in zip(reference, with_workers, strict=True)
    )

    first = PackedLoader(path, batch_size=4, workers=2)
    for n, _ in enumerate(first, start=1):
        if n == 200:
            break
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    assert state["sequences"] == 200 * 4
    assert {s["name"]: s["epoch"] for s in state["sources"]}["sft"] >= 1

    resumed = PackedLoader(path, batch_size=4, workers=1)
    resumed.load_state_dict(state)
    rest = [b["input_ids"].numpy() for b in resumed]
    assert len(rest) == len(reference) - 200
    assert all(np.array_equal(a, b) for a, b in zip(rest, reference[200:], strict=True))


def test_a_state_from_another_manifest_is_refused(corpus):
    a, b = stage_manifest(corpus, seed=3), stage_manifest(corpus, seed=4)
    loader = PackedLoader(a)
    with pytest.raises(ManifestError, match="resuming would read other data"):
        loader.load_state_dict(PackedLoader(b).state_dict())


def test_a_manifest_edited_or_with_changed_shards_is_refused(corpus, tmp_path):
    manifest = stage_manifest(corpus)
    path = write_stage_manifest(manifest, tmp_path / "m")
    assert read_stage_manifest(tmp_path / "m")["manifest_hash"] == manifest["manifest_hash"]
    edited = json.loads(path.read_text())
    edited["seed"] = 99
    path.write_text(json.dumps(edited))
    with pytest.raises(ManifestError, match="edited by hand"):
        read_stage_manifest(path)
    write_stage_manifest(manifest, tmp_path / "m")
    shard = next(corpus["en"].glob("00001*.ds"))
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(ManifestError, match="changed since the build"):
        read_stage_manifest(path)


def test_a_stage_without_two_same_type_sources_of_one_type_packs_as_before(corpus):
    # sha256 of (input_ids, labels, position_ids, scheduled source) of every batch, as the loader gave
    # them before same-type sources of one type were packed together: concat sources and a same-type
    # source alone in its type must give the very same batches
    before = {
        (1, 0): "e528d2a6f833bdc7adad926170f56b65c3730581fbd0ca45014186b4328139fb",
        (2, 0): "f745278656655f3d4b074144c22b39c76aa829d425045cdd9079dde64b004690",
        (2, 1): "6ea66234c4e74a44e7a11476dab5ebba08eb9373cddd1dde39345435b1b4602f",
    }
    manifest = stage_manifest(corpus, tokens=40 * SEQ_LEN * 30)  # epochs turn
    for (world, rank), digest in before.items():
        h = hashlib.sha256()
        for b in PackedLoader(manifest, rank=rank, world=world, batch_size=4):
            source = b["source"].numpy()
            assert source.shape == b["input_ids"].shape and np.all(source == source[:, :1])
            for key in ("input_ids", "labels", "position_ids"):
                h.update(b[key].numpy().astype(np.int64).tobytes())
            h.update(source[:, 0].tobytes())
        assert h.hexdigest() == digest, (world, rank)


SFT_BASES = {"sft_a": 5000, "sft_b": 7000}


@pytest.fixture
def short_sft(tmp_path):
    """Two instruction sources of short documents of different lengths, beside zh and en."""
    tok = tmp_path / "tokenizer.json"
    tok.write_text('{"model": "test"}')
    rng = np.random.default_rng(1)
    return {
        "zh": doc_folder(tmp_path / "zh", 1000, rng.integers(1, 150, 200).tolist(), tok),
        "en": doc_folder(tmp_path / "en", 3000, rng.integers(1, 90, 300).tolist(), tok),
        "sft_a": doc_folder(tmp_path / "sft_a", SFT_BASES["sft_a"], rng.integers(30, 50, 60).tolist(), tok),
        "sft_b": doc_folder(tmp_path / "sft_b", SFT_BASES["sft_b"], rng.integers(3, 20, 150).tolist(), tok),
    }


def two_sft_manifest(folders, types=("sft", "sft"), tokens=40 * SEQ_LEN * 10) -> dict:
    sources = [Source(name="zh", path=str(folders["zh"]), weight=2.0)]
    for name, kind in zip(SFT_BASES, types, strict=True):
        sources.append(Source(name=name, path=str(folders[name]), weight=1.0, packing="same_type", type=kind))
    stage = Stage(
        name="t",
        seq_len=SEQ_LEN,
        tokens=tokens,
        seed=5,
        sources=sources,
        replay=Replay(share=0.25, sources=[Source(name="en", path=str(folders["en"]))]),
    )
    return plan(stage, "t.yaml")


def pieces_of(seq: dict) -> list[tuple[int, int, int]]:
    """(source, token, length) of every real piece of a sequence, in order (padding left out)."""
    edges = cu_seqlens(seq["position_ids"])
    pieces = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if seq["input_ids"][a] != 0:
            assert len(set(seq["source"][a:b].tolist())) == 1  # one source id over a whole piece
            pieces.append((int(seq["source"][a]), int(seq["input_ids"][a]), int(b - a)))
    return pieces


def document_lengths(entry: dict) -> np.ndarray:
    """Token count of every document of a manifest source, in the source's document numbering."""
    ends = [np.fromfile(f"{f['path']}.index", np.uint64).astype(np.int64) for f in entry["files"]]
    return np.concatenate([np.diff(e, prepend=0) for e in ends])


def test_same_type_sources_of_one_type_share_sequences_and_pad_less(short_sft):
    manifest = two_sft_manifest(short_sft)
    names = [s["name"] for s in manifest["sources"]]
    bases = {"zh": 1000, "en": 3000, **SFT_BASES}
    a, b = names.index("sft_a"), names.index("sft_b")
    seqs = all_sequences(manifest)
    apart = all_sequences(two_sft_manifest(short_sft, types=("sft", "chat")))
    assert len(seqs) == len(apart)  # the type changes the packing, not the budget

    schedule = Interleave(sequences_per_source(manifest))
    scheduled = [schedule.next() for _ in seqs]
    pieces = [pieces_of(seq) for seq in seqs]
    for seq, s, own in zip(seqs, scheduled, pieces, strict=True):
        # a sequence is still the scheduled source's: it opens it, and its padding carries its id
        assert own[0][0] == s and np.all(seq["source"][seq["input_ids"] == 0] == s)
        # (d) every piece's source id names the source whose shard holds its tokens
        for source, token, _ in own:
            documents = sum(f["documents"] for f in manifest["sources"][source]["files"])
            assert bases[names[source]] <= token < bases[names[source]] + documents
        if s not in (a, b):
            assert {p[0] for p in own} == {s}  # concat sources take nobody in

    # (a) some sequences hold documents of both instruction sources, which packed apart never do
    assert sum({p[0] for p in own} == {a, b} for own in pieces) > 20
    assert all(len({p[0] for p in pieces_of(seq)}) == 1 for seq in apart)

    # (b) less padding than packing the two apart
    padding = sum(int((seq["input_ids"] == 0).sum()) for seq in seqs)
    padding_apart = sum(int((seq["input_ids"] == 0).sum()) for seq in apart)
    assert padding < 0.5 * padding_apart, (padding, padding_apart)

    # (c) each instruction source's documents come whole, once an epoch, in the source's seeded order,
    # whichever source's sequence took them
    for s in (a, b):
        entry = manifest["sources"][s]
        lengths = document_lengths(entry)
        taken = [
            (token - bases[entry["name"]], n) for own in pieces for source, token, n in own if source == s
        ]
        assert all(n == lengths[doc] for doc, n in taken)
        epochs = range(len(taken) // len(lengths) + 1)
        orders = [DocumentOrder(len(lengths), order_key(manifest["seed"], entry["name"], e)) for e in epochs]
        expected = np.concatenate([order(np.arange(len(lengths))) for order in orders])
        assert [doc for doc, _ in taken] == expected[: len(taken)].tolist()
        assert len(taken) > len(lengths)  # past one epoch: the order turned over


def test_resume_is_exact_when_same_type_sources_take_each_others_documents(short_sft, tmp_path):
    manifest = two_sft_manifest(short_sft)  # both instruction sources turn epochs
    write_stage_manifest(manifest, tmp_path / "m")
    path = tmp_path / "m" / "manifest.json"
    names = [s["name"] for s in manifest["sources"]]
    for rank in range(2):
        reference = list(PackedLoader(path, rank=rank, world=2, batch_size=4, workers=0))
        first = PackedLoader(path, rank=rank, world=2, batch_size=4, workers=2)
        taken = []
        for batch in first:
            taken.append(batch)
            if len(taken) == 37:
                break
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        mixed = [
            row
            for batch in taken
            for row in batch["source"].numpy()
            if {names[i] for i in row} == {"sft_a", "sft_b"}
        ]
        assert mixed  # streams were advanced by a partner's sequences before the state was taken
        assert state["sequences"] == 37 * 4 * 2
        assert all(c["epoch"] >= 1 for c in state["sources"] if c["name"] in SFT_BASES)
        resumed = PackedLoader(path, rank=rank, world=2, batch_size=4, workers=2)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(taken) + len(rest) == len(reference)
        for got, want in zip(taken + rest, reference, strict=True):
            for key in ("input_ids", "labels", "position_ids", "source"):
                assert np.array_equal(got[key].numpy(), want[key].numpy()), key
