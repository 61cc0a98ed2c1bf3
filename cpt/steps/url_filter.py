"""datatrove's URL filter, offline, extended with a block-list file the user keeps.

URLFilter's domain and word lists ship inside datatrove; only tldextract would reach the network
(to refresh the public-suffix list), so it is built on its bundled snapshot.
"""

from __future__ import annotations

import os
from pathlib import Path

from datatrove.pipeline.filters import URLFilter

_STRIPPED = b" \t\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.strip() removes from an ASCII line, "\n" aside


def read_bundled_list(path: str, extra: set) -> set[str]:
    """datatrove's `get_list(..., do_normalize=False)` (each line stripped, `#` lines skipped, plus
    `extra`), read without a Python loop over its 4.5 million lines where every line is plain ASCII with
    nothing to strip (datatrove's bundled lists are), and without copying the set for the union."""
    with open(path, "rb") as f:
        data = f.read()
    plain = (
        data.isascii()
        and len(data.translate(None, _STRIPPED)) == len(data)
        and not data.startswith((b"#", b"\n"))
        and b"\n#" not in data
        and b"\n\n" not in data
    )
    if not plain:  # datatrove's own reading
        from datatrove.pipeline.filters.url_filter import get_list

        return get_list(os.path.dirname(path), os.path.basename(path), extra, do_normalize=False)
    lines = data.decode("ascii").split("\n")
    if lines and not lines[-1]:
        lines.pop()  # after the last newline: a file iterator yields no line there
    entries = set(lines)
    entries |= extra
    return entries


def read_block_list(path: str | Path | None) -> tuple[list[str], list[str]]:
    """(domains, urls) from a file of one entry a line; '#' starts a comment."""
    if not path:
        return [], []
    domains, urls = [], []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            (urls if "/" in entry else domains).append(entry.lower())
    return domains, urls


class OfflineURLFilter(URLFilter):
    """Removal reasons (datatrove's): `domain`, `subdomain`, `url`, `hard_blacklisted`,
    `soft_blacklisted`, `blacklisted_subword`; documents without a URL are kept."""

    name = "😈 URL filter (offline)"

    def __init__(self, block_list: str | None = None, soft_word_threshold: int = 2):
        domains, urls = read_block_list(block_list)
        super().__init__(soft_word_threshold=soft_word_threshold, extra_domains=domains, extra_urls=urls)
        from tldextract import TLDExtract

        self.tldextractor = TLDExtract(suffix_list_urls=())  # bundled suffix snapshot, no download

    def download_data(self):
        """datatrove's `download_data`, with its two block lists (4.5 million domains, 20 thousand URLs) read
        by `read_bundled_list`: datatrove's reading took 2-3 s a task, paid by every task of a run."""
        if self._downloaded or not self.use_integrated_lists:
            return
        import tarfile

        from datatrove.io import safely_create_file
        from datatrove.pipeline.filters.url_filter import get_list
        from datatrove.utils._import_utils import ASSETS_PATH
        from huggingface_hub import cached_assets_path

        folder = cached_assets_path(library_name="datatrove", namespace="filters", subfolder="url_filter")

        def extract():
            with tarfile.open(os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz"), "r:gz") as tar:
                tar.extractall(folder, filter="data")

        safely_create_file(os.path.join(folder, "url_filterblacklistsv0_3_0.tar.gz"), extract)
        self.block_listed_domains = read_bundled_list(
            os.path.join(folder, "domains"), self.block_listed_domains
        )
        self.block_listed_url = read_bundled_list(os.path.join(folder, "urls"), self.block_listed_url)
        self.banned_words = get_list(ASSETS_PATH, "banned_words.txt", self.banned_words)
        self.banned_subwords = get_list(ASSETS_PATH, "banned_subwords.txt", self.banned_subwords)
        self.soft_banned_words = get_list(ASSETS_PATH, "soft_banned_words.txt", self.soft_banned_words)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True

    def filter(self, document):
        if not document.metadata.get("url"):
            return True  # jsonl/parquet inputs may carry no URL
        return super().filter(document)
