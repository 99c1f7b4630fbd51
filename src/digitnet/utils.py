"""Small helpers shared by every room: atomic writes, one-line messages, the CPU's name."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Protocol


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a unique temp file beside `path`; on success fsync and rename it over `path`.

    A crash or exception leaves `path` untouched (old content or absent) and removes the temp
    file, so readers never see a half-written checkpoint, cache entry or export.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first non-blank line of an exception's message (its type name when it has none),
    cut to `limit` characters: what a one-line error quotes of a library's failure."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:limit]


class _Printer(Protocol):
    def print(self, *objects: Any, markup: bool | None = ..., highlight: bool | None = ...) -> None: ...


def say(console: _Printer | None, message: str) -> None:
    """A progress line for a person: on `console` (a Rich Console) or, without one, on stderr."""
    if console is not None:
        console.print(message, markup=False, highlight=False)
    else:
        print(message, file=sys.stderr)


def cpu_name() -> str:
    """The processor's marketing name ("Intel(R) Xeon(R) …"), for reports and per-machine caches."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # no /proc: not Linux
    return platform.processor() or platform.machine()
