"""datatrove's URL filter, offline, extended with a block-list file the user keeps.

URLFilter's domain and word lists ship inside datatrove; only tldextract would reach the network
(to refresh the public-suffix list), so it is built on its bundled snapshot.
"""

from __future__ import annotations

from pathlib import Path

from datatrove.pipeline.filters import URLFilter


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

    def filter(self, document):
        if not document.metadata.get("url"):
            return True  # jsonl/parquet inputs may carry no URL
        return super().filter(document)
