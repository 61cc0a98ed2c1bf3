"""Model-based filtering: fastText classifiers (quality, code, math, topic) and the KL outlier filter.

Text is normalised the same way at training and at scoring time (`classifier_text`): lower case,
words only, Chinese split into words by jieba, so a classifier sees at scoring exactly the features it
was trained on. A classifier is a fastText `.bin` with a `.json` beside it (settings, labels, held-out
precision/recall/F1). Binary classifiers are trained with the labels `positive` and `negative`; the
score is P(positive). A multi-class one (topic) writes its top label and that label's probability.

Scores go into the document's metadata under the fixed names of the shard schema (`quality_score`,
`code_score`, `math_score`, `topic`/`topic_score`, `kl_divergence`), so shards of every run still
concatenate without schema merging.
"""

from __future__ import annotations

import json
import math
import random
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from cpt.io import read_json, write_json, written_file
from cpt.shards import BOOKKEEPING, ShardReadError, read_rows
from cpt.steps.heuristics import chinese_words
from cpt.steps.langid import CJK, guess_lang

CLASSIFIERS = ("quality", "code", "math", "topic")  # the names the shard schema has columns for
_WORD = re.compile(r"\w+", re.UNICODE)
_KL_UNIT = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\W\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
)


class ClassifierError(ValueError):
    """Bad training input or a classifier that cannot be used; the message names the file."""


_last_words: tuple = (
    None,
    None,
    [],
)  # (text, lang, words): the KL filter and each classifier share one split


def words(text: str, lang: str) -> list[str]:
    """Lower-cased words; Chinese through jieba (other scripts split on non-word characters)."""
    global _last_words
    if _last_words[0] is text and _last_words[1] == lang:
        return _last_words[2]
    result = _split_words(text, lang)
    _last_words = (text, lang, result)
    return result


def _split_words(text: str, lang: str) -> list[str]:
    if lang == "zh" or CJK.search(text[:2000]):
        return [w for w in (t.lower() for t in chinese_words(text)) if _WORD.match(w)]
    return _WORD.findall(text.lower())


def classifier_text(text: str, lang: str | None = None, max_words: int = 2000) -> str:
    """The one-line form fastText trains and predicts on."""
    return " ".join(words(text, lang or guess_lang(text))[:max_words])


# ---------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------


def read_examples(
    path: str | Path, label_column: str | None = None
) -> Iterator[tuple[str, str | None, str | None]]:
    """(text, lang, label) from Parquet or JSON lines (`text`, optional `lang` and label column) or
    text files (one document a line)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    files = [
        p
        for p in files
        if p.suffix in (".parquet", ".jsonl", ".txt", ".utf8") and not BOOKKEEPING & set(p.parts)
    ]
    if not files:
        raise ClassifierError(f"{path}: no .parquet, .jsonl or .txt files")
    for f in files:
        if f.suffix == ".txt" or f.suffix == ".utf8":
            if label_column:
                raise ClassifierError(f"{f}: text files have no label column ({label_column})")
            with f.open(encoding="utf-8", errors="replace") as lines:
                yield from ((line.strip(), None, None) for line in lines if line.strip())
            continue
        for row in _rows(f, label_column):
            label = _field(row, label_column, f) if label_column else None
            if row["text"]:
                yield row["text"], row["lang"], None if label is None else str(label)


def _rows(path: Path, label_column: str | None) -> Iterator[dict]:
    """Rows of a Parquet or JSON-lines file: `text`, `lang` (None when absent) and the label's column."""
    head = label_column.partition(".")[0] if label_column else None
    needed = ["text"] + ([head] if head and head != "text" else [])

    def missing(name: str) -> ClassifierError:
        hint = "" if name == "text" else f" (--label-column {label_column})"
        return ClassifierError(f"{path}: no `{name}` column{hint}")

    if path.suffix == ".jsonl":
        import polars as pl

        frame = pl.read_ndjson(path)
        for name in needed:
            if name not in frame.columns:
                raise missing(name)
        has_lang = "lang" in frame.columns
        for row in frame.iter_rows(named=True):
            yield {**row, "lang": row["lang"] if has_lang else None}
        return
    try:
        yield from read_rows(path, needed, optional=("lang",))
    except ShardReadError as e:  # keep naming the label column's flag
        name = next((n for n in needed if f"no `{n}` column" in str(e)), None)
        raise (missing(name) if name else ClassifierError(str(e))) from None


def _field(row: dict, name: str, path: Path):
    """A column's value, or a field of a struct column as `metadata.topic`."""
    head, _, rest = name.partition(".")
    value = row[head]
    for part in rest.split(".") if rest else []:
        if value is None:
            return None
        if not isinstance(value, dict) or part not in value:
            raise ClassifierError(f"{path}: `{name}`: no field {part!r}")
        value = value[part]
    return value


@dataclass
class TrainResult:
    model: Path
    labels: list[str]
    metrics: dict[str, dict[str, float]]  # label -> precision, recall, f1, support (held-out split)
    train_examples: int
    heldout_examples: int
    settings: dict = field(default_factory=dict)


def _label(name: str) -> str:
    return "__label__" + re.sub(r"\s+", "_", name.strip())


def train_classifier(
    output: str | Path,
    positive: list[str] | None = None,
    negative: list[str] | None = None,
    labeled: list[str] | None = None,
    label_column: str | None = None,
    epochs: int = 25,
    ngrams: int = 2,
    dim: int = 64,
    lr: float = 0.5,
    heldout: float = 0.1,
    seed: int = 0,
    threads: int = 1,
) -> TrainResult:
    """Train a fastText classifier, evaluate it on a seeded held-out split, write `.bin` and `.json`."""
    import fasttext

    examples: list[tuple[str, str]] = []
    if labeled:
        if not label_column:
            raise ClassifierError("a labelled source needs --label-column")
        for path in labeled:
            examples += [(classifier_text(t, lang), label) for t, lang, label in read_examples(path, label_column)
                         if label is not None]  # fmt: skip
    else:
        if not positive or not negative:
            raise ClassifierError("give --positive and --negative sources, or a labelled source")
        for label, paths in (("positive", positive), ("negative", negative)):
            for path in paths:
                examples += [(classifier_text(t, lang), label) for t, lang, _ in read_examples(path)]
    examples = [(t, label) for t, label in examples if t]
    labels = sorted({label for _, label in examples})
    if len(labels) < 2:
        raise ClassifierError(f"training needs two labels or more (got {labels})")
    random.Random(seed).shuffle(examples)
    n_heldout = max(1, round(len(examples) * heldout)) if heldout > 0 else 0
    test, train = examples[:n_heldout], examples[n_heldout:]

    output = Path(output)
    settings = {"epoch": epochs, "wordNgrams": ngrams, "dim": dim, "lr": lr, "seed": seed, "thread": threads}
    # both are written before either is renamed into place (the model first): a failure leaves neither
    with written_file(output.with_name(output.name + ".json")) as tmp_info, written_file(output) as tmp_model:
        with tempfile.TemporaryDirectory(prefix="cpt-fasttext-") as tmp:
            train_file = Path(tmp) / "train.txt"
            train_file.write_text("".join(f"{_label(y)} {x}\n" for x, y in train), encoding="utf-8")
            model = fasttext.train_supervised(input=str(train_file), verbose=0, **settings)
        model.save_model(str(tmp_model))
        metrics = evaluate_split(model, test, labels)
        info = {
            "labels": labels,
            "settings": settings,
            "train_examples": len(train),
            "heldout_examples": len(test),
            "heldout_metrics": metrics,
            "normalisation": "cpt.steps.classify.classifier_text",
        }
        tmp_info.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")  # ASCII-escaped, as before
    return TrainResult(output, labels, metrics, len(train), len(test), settings)


def evaluate_split(model, examples: list[tuple[str, str]], labels: list[str]) -> dict[str, dict[str, float]]:
    """Per-label precision, recall, F1 and support of top-1 predictions, and their macro average."""
    predicted = [model.predict(text)[0][0].removeprefix("__label__") for text, _ in examples]
    truth = [y for _, y in examples]
    metrics = {}
    for label in labels:
        tp = sum(p == label and t == label for p, t in zip(predicted, truth, strict=True))
        fp = sum(p == label and t != label for p, t in zip(predicted, truth, strict=True))
        fn = sum(p != label and t == label for p, t in zip(predicted, truth, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[label] = {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}
    metrics["macro"] = {
        k: sum(metrics[lab][k] for lab in labels) / len(labels) for k in ("precision", "recall", "f1")
    }
    return metrics


# ---------------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------------


class ClassifierScorer(BaseFilter):
    """Score documents with one classifier; `tag` only writes the score, `drop` removes documents
    under the threshold (reason `<name>_below_threshold`), `route` sends documents at or over it to
    their own output folder (`OUTPUT/<name>/<lang>/`)."""

    name = "🏷️ fastText classifier"

    def __init__(
        self,
        classifier: str,
        model_path: str,
        action: str = "tag",
        threshold: float = 0.5,
        exclusion_writer=None,
    ):
        super().__init__(exclusion_writer)
        if classifier not in CLASSIFIERS:
            raise ClassifierError(
                f"classifier name {classifier!r}: the shard schema has {', '.join(CLASSIFIERS)}"
            )
        if action not in ("tag", "drop", "route"):
            raise ClassifierError(f"{classifier}: action {action!r} (tag, drop or route)")
        self.classifier, self.model_path, self.action, self.threshold = (
            classifier,
            model_path,
            action,
            threshold,
        )
        self._model = None

    @property
    def model(self):
        if self._model is None:
            import fasttext

            if not Path(self.model_path).is_file():
                raise ClassifierError(
                    f"{self.model_path}: no classifier (train one with `run.py train-classifier`)"
                )
            self._model = fasttext.load_model(self.model_path)
        return self._model

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        text = classifier_text(doc.text, doc.metadata.get("lang"))
        labels, probs = self.model.predict(text, k=-1)
        scores = {label.removeprefix("__label__"): float(p) for label, p in zip(labels, probs, strict=True)}
        if self.classifier == "topic":
            top = max(scores, key=scores.get)
            doc.metadata["topic"], doc.metadata["topic_score"] = top, scores[top]
            score = scores[top]
        else:
            score = scores.get("positive", 0.0)
            doc.metadata[f"{self.classifier}_score"] = score
        self.stat_update(f"scored_{self.classifier}")
        if self.action == "drop" and score < self.threshold and not doc.metadata.get("route"):
            return False, f"{self.classifier}_below_threshold"
        if self.action == "route" and score >= self.threshold and not doc.metadata.get("route"):
            doc.metadata["route"] = self.classifier
            self.stat_update(f"routed_{self.classifier}")
        return True


# ---------------------------------------------------------------------------------------------------
# KL outlier filter
# ---------------------------------------------------------------------------------------------------


def build_kl_reference(texts: Iterator[tuple[str, str]], output: str | Path, max_words: int = 50_000) -> dict:
    """Unigram counts per language (`kl_units`) from a sample of (text, lang), saved as JSON (the most
    frequent `max_words` per language, plus the totals for smoothing)."""
    counts: dict[str, Counter] = {}
    for text, lang in texts:
        counts.setdefault(lang, Counter()).update(kl_units(text, lang))
    reference = {
        lang: {"total": sum(c.values()), "vocabulary": len(c), "counts": dict(c.most_common(max_words))}
        for lang, c in counts.items()
    }
    write_json(output, reference, indent=None)
    return reference


def kl_units(text: str, lang: str) -> list[str]:
    """What the KL filter counts: lower-cased words, and Chinese character by character (a few thousand
    characters cover Chinese text, where jieba's words leave a long tail a sample cannot cover)."""
    if lang == "zh" or CJK.search(text[:2000]):
        return [u.lower() for u in _KL_UNIT.findall(text)]
    return _WORD.findall(text.lower())


def kl_divergence(doc_words: list[str], reference: dict) -> float:
    """KL(document's unigram distribution || the reference's), in nats; the reference is add-one
    smoothed, so a word it never saw costs log(total + vocabulary) instead of infinity."""
    if not doc_words:
        return 0.0
    counts = Counter(doc_words)
    n = len(doc_words)
    denominator = reference["total"] + reference["vocabulary"] + 1
    ref = reference["counts"]
    return sum(c / n * math.log((c / n) * denominator / (ref.get(w, 0) + 1)) for w, c in counts.items())


class KLFilter(BaseFilter):
    """Drop documents whose word distribution is far from the corpus's (token salad, one repeated
    character, encoded blobs): KL above `threshold` nats, reason `kl_outlier`. Documents of a language
    the reference lacks pass untouched."""

    name = "📐 KL outlier"

    def __init__(
        self, reference_path: str, threshold: float = 6.0, min_words: int = 20, exclusion_writer=None
    ):
        super().__init__(exclusion_writer)
        self.reference_path, self.threshold, self.min_words = reference_path, threshold, min_words
        self._reference = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._reference is None:
            self._reference = read_json(self.reference_path)
        lang = doc.metadata.get("lang") or guess_lang(doc.text)
        reference = self._reference.get(lang)
        if reference is None:
            return True
        doc_words = kl_units(doc.text, lang)
        # a document of a few words has a noisy distribution; one long "word" (a blob) still counts
        if len(doc_words) < self.min_words and not any(len(w) > 40 for w in doc_words):
            return True
        if not doc_words and len(doc.text.strip()) >= 100:  # a long text without a single word
            return False, "kl_outlier"
        divergence = kl_divergence(doc_words, reference)
        doc.metadata["kl_divergence"] = divergence
        return True if divergence <= self.threshold else (False, "kl_outlier")


# ---------------------------------------------------------------------------------------------------
# settings of the scoring steps (the `score` pipeline and the `kl`/`classify` steps of `clean`)
# ---------------------------------------------------------------------------------------------------


@dataclass
class ClassifierConfig:
    action: Literal["tag", "drop", "route"] = "tag"
    threshold: float = 0.5
    path: str | None = None  # default: <models>/<name>.bin


@dataclass
class KLConfig:
    enabled: bool = True
    reference: str | None = None  # a saved reference; default: built into OUTPUT/report/kl_reference.json
    threshold: float = 4.0  # nats: prose scores 0.5-2, blobs and salad 6-10 (BENCHMARKS.md)
    min_words: int = 20
    sample_docs: int = 5000  # documents per language the reference is built from


@dataclass
class ScoreConfig:
    """What the KL filter and the classifiers run with; a pipeline adds its own write and executor
    settings beside these (a subclass keeps the keys in this order)."""

    models: str = "models"
    classifiers: dict[str, ClassifierConfig] = field(default_factory=dict)
    kl: KLConfig = field(default_factory=KLConfig)

    def validate(self) -> list[str]:
        problems = [
            f"classifiers.{name}: not a classifier the shard schema holds (allowed: {', '.join(CLASSIFIERS)})"
            for name in self.classifiers
            if name not in CLASSIFIERS
        ]
        for name, c in self.classifiers.items():
            if not 0 <= c.threshold <= 1:
                problems.append(f"classifiers.{name}.threshold: within [0, 1] (got {c.threshold})")
        return problems

    def model_path(self, name: str) -> str:
        c = self.classifiers.get(name) or ClassifierConfig()
        return c.path or str(Path(self.models) / f"{name}.bin")


def scoring_steps(cfg: ScoreConfig, names: list[str], kl_reference: str | None) -> tuple[list, list[str]]:
    """KL filter (when a reference is given) and one scorer per classifier named, with funnel labels."""
    steps, labels = [], []
    if kl_reference:
        steps.append(KLFilter(kl_reference, cfg.kl.threshold, cfg.kl.min_words))
        labels.append("kl")
    # routing classifiers run first, and a routed document is not dropped by a later one: code and
    # math pages are their own data, not low-quality web text
    order = {"route": 0, "drop": 1, "tag": 2}
    for name in sorted(names, key=lambda n: order[(cfg.classifiers.get(n) or ClassifierConfig()).action]):
        c = cfg.classifiers.get(name) or ClassifierConfig()
        path = cfg.model_path(name)
        if not Path(path).is_file():
            raise FileNotFoundError(
                f"{path}: no {name} classifier (train it with `run.py train-classifier --name {name}`)"
            )
        steps.append(ClassifierScorer(name, str(Path(path).resolve()), c.action, c.threshold))
        labels.append(f"classify.{name}")
    return steps, labels
