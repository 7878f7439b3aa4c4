"""One exception type for bad user input, so the CLI can print a one-line error and exit 2.

``user_message(exc)`` is what the CLI prints: the message of an ``ELOError`` anywhere in the exception's
cause/context chain (jsonargparse wraps errors raised while instantiating a config's classes, DataLoader
workers re-raise them with the worker's traceback in the message), or "no space left on device" for a full
disk. Anything else is a programming error and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

_WORKER_PREFIX = "elo_lightning.errors.ELOError: "
_DISK_FULL_TEXT = ("No space left on device", "StorageFull")


class ELOError(ValueError):
    """Invalid input detected before any work is done (bad layer index, missing shard, mismatch...)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _one_line(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    worker = [line[len(_WORKER_PREFIX):] for line in lines if line.startswith(_WORKER_PREFIX)]
    if worker:  # "Caught ELOError in DataLoader worker process 0. Original Traceback ...": keep the message
        return worker[-1]
    return " ".join(lines)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain, also as text (torch.save and safetensors report it inside their own errors)."""
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or any(t in str(e) for t in _DISK_FULL_TEXT)
               for e in _chain(exc))


def disk_full_message(path: str | Path | None) -> str:
    return f"no space left on device while writing {path or 'the output'}"


def user_message(exc: BaseException) -> str | None:
    """The one-line message for a user error (an ``ELOError`` in the chain, a full disk); None otherwise."""
    for e in _chain(exc):
        if isinstance(e, ELOError):
            return _one_line(str(e))
    if is_disk_full(exc):
        path = next((e.filename for e in _chain(exc) if isinstance(e, OSError) and e.filename), None)
        return disk_full_message(path)
    return None


def _no_room(path: Path) -> bool:
    """The file system of ``path`` has (almost) no free bytes left: torch.save reports ENOSPC only as
    "file write failed", without errno or text."""
    import shutil

    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free < 1 << 20
    return False


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Around a write to ``path``: a full disk becomes ``ELOError("no space left on device while writing PATH")``."""
    try:
        yield
    except ELOError:
        raise
    except Exception as err:
        if is_disk_full(err) or _no_room(Path(path)):
            raise ELOError(disk_full_message(path)) from err
        raise
