"""PII redaction: datatrove's e-mail and IP replacers, plus phone numbers (Chinese formats included).

E-mails and IPs are replaced as FineWeb does (datatrove's PIIFormatter: example.com addresses and
unrouted IPs, public IPs only by default). datatrove has no phone-number rule; cpt adds one for
North-American, international (+CC) and Chinese mobile / landline numbers, replaced by `<PHONE>`.
The count of replacements goes into the `pii_redactions` metadata and the step's stats.
"""

from __future__ import annotations

import re

from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer
from datatrove.utils.typeshelper import StatHints

_PHONE_PATTERNS = [
    # China mobile: 11 digits starting 13-19, optional +86 / 86, spaces or dashes as 3-4-4
    r"(?:\+?86[\s-]?)?1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}",
    # China landline: area code 0xx / 0xxx, then 7-8 digits (dash required, so years and ids do not match)
    r"(?:\+?86[\s-]?)?\(?0\d{2,3}\)?-\d{3,4}[\s-]?\d{4}",
    # international with a leading +: country code then 2-5 groups of digits
    r"\+\d{1,3}[\s.-]?\(?\d{1,4}\)?(?:[\s.-]?\d{2,4}){2,4}",
    # North America: (415) 555-0134, 415-555-0134, 415.555.0134, optional leading 1
    r"(?:1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}",
]
PHONE_REGEX = r"(?<![\w+])(?:" + "|".join(_PHONE_PATTERNS) + r")(?![\w])"
PHONE_REPLACEMENT = "<PHONE>"


def redact(replacer: PIIReplacer, text: str) -> tuple[str, int]:
    """Like PIIReplacer.replace, but also returns how many matches were replaced."""
    count = 0

    def substitute(m: re.Match) -> str:
        nonlocal count
        if replacer.validator and not replacer.validator(m.group(0)):
            return m.group(0)
        count += 1
        replacement = replacer.replacements[replacer._replace_i]
        replacer._replace_i = (replacer._replace_i + 1) % len(replacer.replacements)
        return replacement

    return replacer.regex.sub(substitute, text), count


class PIIRedactor(PIIFormatter):
    """Stats: `redacted_email`, `redacted_ip`, `redacted_phone` (counts of replacements)."""

    name = "📞 PII (e-mail, IP, phone)"

    def __init__(
        self, emails: bool = True, ips: bool = True, public_ips_only: bool = True, phones: bool = True
    ):
        super().__init__(remove_emails=emails, remove_ips=ips, only_remove_public_ips=public_ips_only)
        self.remove_phones = phones
        self.phone_replacer = PIIReplacer(PHONE_REGEX, PHONE_REPLACEMENT)

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            self.stat_update(StatHints.total, StatHints.forwarded)
            with self.track_time():
                total = 0
                for kind, enabled, replacer in (
                    ("email", self.remove_emails, self.emails_replacer),
                    ("ip", self.remove_ips, self.ip_replacer),
                    ("phone", self.remove_phones, self.phone_replacer),
                ):
                    if enabled:
                        doc.text, n = redact(replacer, doc.text)
                        if n:
                            self.stat_update(f"redacted_{kind}", value=n)
                            total += n
                doc.metadata["pii_redactions"] = total
            yield doc
