"""The house's floors, read from the source: imports run downward only, and each behaviour has one home.

DESIGN.md's layering: the trainer and the pipelines sit on top, each independent of the other; the
library (`cpt/`) never imports either, nor the demo material (`cpt/demo/`); a pipeline module never
imports another pipeline (shared code lives in `pipelines/common.py` or in `cpt/`); and the rename
that makes a written file or folder appear whole is written once, in `cpt/io.py`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PIPELINE_SHARED = {"pipelines", "pipelines.common"}  # what every pipeline module may import


def python_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in `path` names (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def offending(paths: list[Path], forbidden) -> list[str]:
    return [
        f"{p.relative_to(REPO)} imports {m}"
        for p in paths
        for m in sorted(imported_modules(p))
        if forbidden(m)
    ]


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_library_imports_neither_the_pipelines_nor_the_trainer_nor_the_demo():
    library = [p for p in python_files("cpt") if "demo" not in p.relative_to(REPO / "cpt").parts]
    assert library, "no library sources found"
    bad = offending(library, lambda m: under(m, "pipelines") or under(m, "trainer") or under(m, "cpt.demo"))
    assert bad == []


def test_the_trainer_does_not_import_the_pipelines():
    files = python_files("trainer")
    assert files
    assert offending(files, lambda m: under(m, "pipelines")) == []


def test_the_pipelines_do_not_import_the_trainer():
    files = python_files("pipelines")
    assert files
    assert offending(files, lambda m: under(m, "trainer")) == []


@pytest.mark.parametrize(
    "name", [p.stem for p in python_files("pipelines") if p.stem not in {"__init__", "common", "run"}]
)
def test_a_pipeline_does_not_import_another(name):
    path = REPO / "pipelines" / f"{name}.py"
    own = f"pipelines.{name}"
    bad = offending(
        [path],
        lambda m: (
            under(m, "pipelines")
            and m not in PIPELINE_SHARED
            and not under(m, own)
            and not m.startswith("pipelines.common.")
        ),
    )
    assert bad == []


def test_one_home_for_write_then_rename():
    """`os.replace` (the atomic rename) appears in cpt/io.py only: every writer goes through it."""
    users = []
    for package in ("cpt", "pipelines", "trainer"):
        for path in python_files(package):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and node.attr in ("replace", "rename")
                    and isinstance(node.value, ast.Name)
                    and node.value.id == "os"
                ):
                    users.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert users and all(u.startswith("cpt/io.py:") for u in users), users
