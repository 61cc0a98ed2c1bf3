"""Every file and folder cpt writes is written whole, and never over what the command did not write.

One home for write-to-a-temporary-name-then-rename: a reader (another task, the loader, pandas) never
sees half a file or half a folder, and a run killed mid-write leaves the old version or nothing.

Files: `written_file(path)` yields a temporary path beside `path` for any writer (pyarrow, matplotlib,
torch, fastText) and renames it into place when the block succeeds; `write_text`, `write_bytes` and
`write_json` are built on it. `read_json` reads what `write_json` wrote, naming the file when it is not
JSON.

Folders: a folder is built under a fresh hidden name beside its final one, then renamed into place, so no
reader ever sees half of it. A folder already at the final name is replaced only when it is empty or
is one this kind of command wrote (`owned`): pointed by mistake at a model, a corpus or the input
itself, a command refuses with one line instead of deleting it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


@contextlib.contextmanager
def written_file(path: str | Path) -> Iterator[Path]:
    """`with written_file(path) as tmp:` write `tmp` with any library; at the end it becomes `path` whole.

    `tmp` is a fresh name beside `path` (same file system, so the rename is atomic; concurrent writers
    of the same path never share a temporary name). If the block fails, `tmp` is removed and `path` is
    left as it was. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode a plain open() would give
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` whole (temporary name, then rename)."""
    with written_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 `text` to `path` whole (temporary name, then rename)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write `data` as UTF-8 JSON (non-ASCII kept readable, a final newline) to `path` whole."""
    write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


class JsonFileError(ValueError):
    """A JSON file that cannot be read: the message names the file."""


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; JsonFileError naming the file when it is unreadable or not JSON.

    A missing file raises FileNotFoundError as usual (callers say what should have written it)."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JsonFileError(f"{path}: not valid JSON ({e})") from None
    except IsADirectoryError:
        raise JsonFileError(f"{path}: a folder, not a JSON file") from None


LOCK_NAME = ".cpt.lock"  # inside an output folder while a command writes it


def lock_path(output: str | Path) -> Path:
    return Path(output) / LOCK_NAME


@contextlib.contextmanager
def output_lock(output: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the output folder `output` while the block runs: one writer per output.

    The lock is an OS lock (flock) on `.cpt.lock` inside the folder (made if absent), so the kernel
    releases it when the process ends however it ends: a killed run never blocks the next one. A second
    command on the same output gets OutputError naming the holder (command, pid, host) at once, before any
    work. At the end the lock file, and the folder if this made it and it stayed empty, are removed: a
    command refused later leaves the folder as it found it. A command that swaps a finished folder in
    under the name replaces the lock file with it; it has finished writing by then.

    Across machines it is as good as the file system's locks: local disks and NFS (v4, or v3 with lockd)
    share flock locks between clients; a file system without them (some FUSE mounts, Lustre without
    `-o flock`) gives each machine its own lock, and the rule is then the user's to keep."""
    output = Path(output)
    path = output / LOCK_NAME
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output}: a file, not a folder: choose another output")
    try:
        made_dir = not output.is_dir()
        output.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666 & ~_UMASK)
    except OSError as e:
        raise OutputError(f"{output}: cannot create its lock file {LOCK_NAME} there ({e.strerror})") from None
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(
                f"{output}: another command is writing it ({_holder(fd)}); wait for it to end or choose another "
                "output"
            ) from None
        held = True
        os.ftruncate(fd, 0)
        holder = {"command": what, "pid": os.getpid(), "host": socket.gethostname()}
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield
    finally:
        # removed while still held, so a command that opened it before cannot lock it after; one that
        # opens the name now makes a new file (this command has finished writing)
        if held:
            with contextlib.suppress(OSError):  # gone with a folder swapped in under the name
                if os.path.samestat(os.fstat(fd), os.stat(path)):
                    os.unlink(path)
        os.close(fd)  # releases the lock
        if made_dir:
            with contextlib.suppress(OSError):
                output.rmdir()  # only when empty


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{info['command']}, pid {int(info['pid'])} on {info['host']}"
    except (OSError, ValueError, KeyError, TypeError):  # written this instant, or not by cpt
        return "its holder is not recorded yet"


_DISK_FAULTS = {
    errno.ENOSPC: "no space left on the device: free some, or choose another output",
    errno.EDQUOT: "disk quota exceeded: free some, or choose another output",
    errno.EROFS: "a read-only file system: choose another output",
    errno.EACCES: "permission denied: choose an output you may write, or fix its permissions",
    errno.EPERM: "not permitted: choose an output you may write, or fix its permissions",
}


def disk_fault(e: OSError, where: str | Path | None = None) -> str | None:
    """One line for a fault of the disk a command writes to (full, read-only, not permitted), naming the
    path (the error's own, else `where`: the folder being written); None for any other OSError (a bug or
    a missing input, reported as such)."""
    why = _DISK_FAULTS.get(e.errno)
    if why is None:
        return None
    where = e.filename if e.filename is not None else where or "writing"
    return f"{where}: {why}"


def wrapped_disk_full(e: Exception, folder: str | Path) -> OSError | None:
    """The full disk behind a library's own error for a failed write (torch.save's RuntimeError
    "unexpected pos ...", safetensors' SafetensorError), as an ENOSPC OSError naming `folder`: when the
    message says so, or when `folder`'s disk has under 1 MiB left; None otherwise (a bug, reported as such)."""
    try:
        nearly_full = shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        nearly_full = False
    if "No space left" in str(e) or nearly_full:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    return None


def exit_on_disk_fault(e: OSError, say: bool = True, where: str | Path | None = None) -> int:
    """In a command's `except OSError`: print the fault's one line (when `say`) and return exit status 2,
    or re-raise what is not a disk fault (a bug or a missing input, reported as such). `where` names the
    output for errors that carry no file name (pyarrow's, a library's short write)."""
    line = disk_fault(e, where)
    if line is None:
        raise  # noqa: PLE0704 - called from the except clause handling `e`
    if say:
        print(f"error: {line}", file=sys.stderr)
    return 2


class CustomCodeError(ValueError):
    """A model or tokenizer folder that asks transformers to import Python files shipped with it."""


# the Hugging Face files that can name a class to import from the folder itself (`auto_map`)
_CODE_BEARING = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def refuse_custom_code(folder: str | Path) -> None:
    """CustomCodeError when a model or tokenizer folder names custom code (an `auto_map`), before anything
    of it is loaded: cpt runs only transformers' own classes, with `trust_remote_code=False`, so a
    downloaded folder cannot run code (transformers would otherwise ask, and a piped `y` would run it)."""
    for name in _CODE_BEARING:
        path = Path(folder) / name
        if not path.is_file():
            continue
        data = read_json(path)
        if isinstance(data, dict) and data.get("auto_map"):
            raise CustomCodeError(
                f"{path}: names custom code (auto_map: {', '.join(sorted(map(str, data['auto_map'])))[:120]}); "
                "cpt loads only transformers' own model and tokenizer classes: use a folder without auto_map"
            )


class OutputError(ValueError):
    """An --output that already holds something this command would have to delete."""


def holds_only(*names: str) -> Callable[[Path], bool]:
    """An `owned` test: the folder holds nothing but these top-level names."""
    allowed = {*names, LOCK_NAME}
    return lambda folder: {p.name for p in folder.iterdir()} <= allowed


def holds(name: str) -> Callable[[Path], bool]:
    """An `owned` test: the folder holds this marker file, which the command writes."""
    return lambda folder: (folder / name).is_file()


def check_replaceable(output: str | Path, owned: Callable[[Path], bool], what: str) -> None:
    """Raise OutputError unless `output` is absent, an empty folder or one `owned` recognises."""
    output = Path(output)
    if not output.exists() and not output.is_symlink():
        return
    if output.is_dir() and not output.is_symlink() and (not _contents(output) or owned(output)):
        return
    kind = "a folder" if output.is_dir() else "a file"
    raise OutputError(
        f"{output}: {kind} that is not an earlier {what} output is already there; "
        "it is left as it is: choose another --output"
    )


def _contents(folder: Path) -> list[Path]:
    """What a folder holds besides the lock of the command writing it."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME]


def temp_dir_beside(output: str | Path) -> Path:
    """A new empty folder with a name of its own next to `output` (the same file system: renames are atomic)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; the folder gets the mode a plain mkdir() would give
    return tmp


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
