"""Rebuild debian-handbook-zh-cn.txt from Debian's `debian-handbook` package (11.20220922):

    apt-get download debian-handbook && dpkg -x debian-handbook_*.deb handbook
    python extract_handbook.py handbook/usr/share/doc/debian-handbook/html/zh-CN > debian-handbook-zh-cn.txt

Each paragraph (`<div class="para">`) of the Simplified Chinese HTML, in file-name order, whitespace folded
to one space, kept when it has at least 30 non-space characters of which at least half are CJK ideographs
(the translation leaves some paragraphs in English), each kept once."""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path


class Paragraphs(HTMLParser):
    """The text of every <div class="para">, nested markup (code, links) included."""

    def __init__(self) -> None:
        super().__init__()
        self.divs: list[bool] = []  # for each open <div>: is it a paragraph?
        self.open: list[list[str]] = []
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "div":
            para = dict(attrs).get("class") == "para"
            self.divs.append(para)
            if para:
                self.open.append([])

    def handle_endtag(self, tag):
        if tag == "div" and self.divs and self.divs.pop():
            self.found.append("".join(self.open.pop()))

    def handle_data(self, data):
        if self.open:
            self.open[-1].append(data)


def main(folder: Path) -> None:
    seen: set[str] = set()
    for page in sorted(folder.glob("*.html")):
        parser = Paragraphs()
        parser.feed(page.read_text(encoding="utf-8"))
        for text in parser.found:
            text = re.sub(r"\s+", " ", text).strip()
            chars = len(re.sub(r"\s", "", text))
            cjk = len(re.findall(r"[\u4e00-\u9fff]", text))
            if chars >= 30 and cjk / chars >= 0.5 and text not in seen:
                seen.add(text)
                sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
