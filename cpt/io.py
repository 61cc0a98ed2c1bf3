"""Output folders written whole, and never over a folder the command did not write.

A folder is built under a fresh hidden name beside its final one, then renamed into place, so no
reader ever sees half of it. A folder already at the final name is replaced only when it is empty or
is one this kind of command wrote (`owned`): pointed by mistake at a model, a corpus or the input
itself, a command refuses with one line instead of deleting it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


class OutputError(ValueError):
    """An --output that already holds something this command would have to delete."""


def holds_only(*names: str) -> Callable[[Path], bool]:
    """An `owned` test: the folder holds nothing but these top-level names."""
    allowed = set(names)
    return lambda folder: {p.name for p in folder.iterdir()} <= allowed


def holds(name: str) -> Callable[[Path], bool]:
    """An `owned` test: the folder holds this marker file, which the command writes."""
    return lambda folder: (folder / name).is_file()


def check_replaceable(output: str | Path, owned: Callable[[Path], bool], what: str) -> None:
    """Raise OutputError unless `output` is absent, an empty folder or one `owned` recognises."""
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    if output.is_dir() and not output.is_symlink() and (not any(output.iterdir()) or owned(output)):
        return
    kind = "a folder" if output.is_dir() else "a file"
    raise OutputError(
        f"{output}: {kind} that is not an earlier {what} output is already there; "
        "it is left as it is: choose another --output"
    )


def temp_dir_beside(output: str | Path) -> Path:
    """A new empty folder with a name of its own next to `output` (the same file system: renames are atomic)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))


def replace_dir(tmp: str | Path, output: str | Path, owned: Callable[[Path], bool], what: str) -> None:
    """Rename the finished folder `tmp` to `output`, replacing an earlier output of the same command.

    Checks `output` again (it may have changed since the command began) and raises OutputError, leaving
    both folders as they are, when it holds something else."""
    tmp, output = Path(tmp), Path(output)
    check_replaceable(output, owned, what)
    if not output.exists():
        os.replace(tmp, output)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
    os.rmdir(old)  # a fresh name: nothing of the user's is ever at it
    os.replace(output, old)
    os.replace(tmp, output)
    shutil.rmtree(old)


@contextlib.contextmanager
def written_dir(output: str | Path, owned: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """`with written_dir(out, owned, what) as tmp:` fill `tmp`; at the end it becomes `out` whole.

    Refuses at once (OutputError) when `out` holds something `what` did not write; if the block fails,
    the temporary folder is removed and `out` is left as it was."""
    check_replaceable(output, owned, what)
    tmp = temp_dir_beside(output)
    try:
        yield tmp
        replace_dir(tmp, output, owned, what)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
