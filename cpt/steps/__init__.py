"""cpt's datatrove steps: readers, extractor, language ID, filters, dedup, classifiers, writers.

Importing the package makes datatrove's dependency check of each step cheap (see below)."""

from __future__ import annotations

import functools
import importlib.metadata


def _speed_up_datatrove_dependency_check() -> None:
    """datatrove checks a step's dependencies when the step is built, by parsing the metadata of every
    installed distribution for each name (0.04-0.13 s a name, so a few tenths of a second at the start
    of every pipeline command, before any work). Ask for the one distribution by its name first, and
    fall back to datatrove's own scan only when that finds none: the answers stay datatrove's."""
    from datatrove.utils import _import_utils

    scan = getattr(_import_utils, "_is_distribution_available", None)
    if scan is None or getattr(scan, "by_name", False):  # another datatrove, or done already
        return

    @functools.lru_cache
    def is_distribution_available(distribution_name: str):
        for dist in importlib.metadata.distributions(name=distribution_name):
            name = dist.metadata.get("Name")
            if name and name.lower() == distribution_name:  # datatrove's own test of a match
                return True
        return scan(distribution_name)

    is_distribution_available.by_name = True  # type: ignore[attr-defined]
    is_distribution_available.scan = scan  # type: ignore[attr-defined]
    _import_utils._is_distribution_available = is_distribution_available


_speed_up_datatrove_dependency_check()
