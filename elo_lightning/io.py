"""Atomic writes: a crash mid-save never leaves something that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError, writing

MANIFEST = "elo_manifest.json"  # how a produced directory was made; detached checkpoints: what attach checks


@contextlib.contextmanager
def atomic_dir(output: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``output`` in one rename."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        with writing(output):
            yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        os.replace(output, old)
    os.replace(tmp, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_atomic(path: str | Path, data: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with writing(path), os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path, what: str = "result file") -> Any:
    """A JSON file written by this package (results, summaries, manifests); ELOError when missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ELOError(f"no {what} at {path}")
    try:
        return json.loads(path.read_bytes())
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ELOError(f"{path} is not valid JSON ({err})") from None


def write_jsonl_atomic(path: str | Path, rows: list[Any]) -> None:
    """One JSON object per line (UTF-8, non-ASCII kept), written to a temporary sibling and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
