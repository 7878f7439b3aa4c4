"""The one output writer: a command never deletes what it did not create, and a failed write keeps the old output.

Every export and command output goes through :func:`atomic_dir` (directories) or :func:`write_output_json`
(single JSON files). Before anything is written, :func:`check_output` refuses (``ELOError``, one line):

* an output that is a symlink, a device, a FIFO or another non-regular file, or a file where a directory is due;
* an output equal to, inside, or containing one of the command's inputs (``inputs``) or a folder it must keep
  (``protected``: the trainer's log and checkpoint folders);
* a non-empty directory (or an existing file) that is not a previous output of the same ``kind`` -- recognised
  by the :data:`OUTPUT_MARKER` every output written here carries -- unless ``overwrite=True``.

Then the new output is built beside the old one (same parent, hidden name ``.<name>.tmp-<host>-<pid>-<rand>``) and
swapped in: the old output is renamed aside, the new one renamed in, the old one removed. A crash before the swap
leaves the old output whole and a hidden temp folder, which the next write of the same output removes once its
process is gone (only our own temp names, only beside the output being written). Files and folders get ordinary
permissions (``0o666`` / ``0o777`` minus the umask: ``0o644`` / ``0o755`` as ``save_pretrained`` gives), not the
``0o600`` / ``0o700`` of ``tempfile``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from elo_lightning.errors import ELOError, writing

MANIFEST = "elo_manifest.json"  # how a produced directory was made; detached checkpoints: what attach checks
OUTPUT_MARKER = "elo_output.json"  # in every output directory: {"kind": ..., "created": ...}
OUTPUT_FIELD = "elo_output"  # the same, as a field of a JSON output file: {"elo_output": kind, ...}
PathMap = Mapping[str, "str | Path | None"]


# -- permissions -------------------------------------------------------------------------------------------

def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def ordinary_permissions(path: str | Path) -> None:
    """``chmod`` a file to 0o666 and a directory (recursively, with its contents) to 0o777, minus the umask."""
    path = Path(path)
    mask = umask()
    if path.is_dir() and not path.is_symlink():
        for root, _, files in os.walk(path):  # os.walk does not follow symlinked folders
            os.chmod(root, 0o777 & ~mask)
            for name in files:
                if not os.path.islink(os.path.join(root, name)):
                    os.chmod(os.path.join(root, name), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


# -- checks ------------------------------------------------------------------------------------------------

def _resolve(path: str | Path) -> Path:
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _relation(output: Path, other: Path) -> str | None:
    if output == other:
        return "is"
    if other in output.parents:
        return "is inside"
    if output in other.parents:
        return "contains"
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def output_kind(path: str | Path) -> str | None:
    """The kind recorded by a previous write of ``path`` (directory marker or JSON file field), else None.

    Directories written before the marker existed are recognised by their manifests: ``elo_export.json`` (a
    stage's export, kind ``"<stage> export"``) and ``elo_manifest.json`` (``"detached"`` or ``"chat_vector"``).
    """
    path = Path(path)
    if not path.is_dir():
        return _read_json(path).get(OUTPUT_FIELD) if path.is_file() else None
    marker = _read_json(path / OUTPUT_MARKER)
    if marker:
        return marker.get("kind")
    export = _read_json(path / "elo_export.json")
    if export.get("stage"):
        return f"{export['stage']} export"
    manifest = _read_json(path / MANIFEST)
    if manifest.get("format", "").startswith("elo-detached/"):
        return "detached"
    return manifest.get("stage")


def check_output(output: str | Path, kind: str, *, inputs: PathMap | None = None, protected: PathMap | None = None,
                 overwrite: bool = False, is_dir: bool = True) -> Path:
    """Refuse an output this command may not write (see the module docstring); returns it as a ``Path``.

    ``inputs`` / ``protected``: ``{"what": path}`` (``None`` values and non-paths such as hub ids are skipped).
    """
    output = Path(output)
    where = f"output {output}"
    if os.path.islink(output):
        raise ELOError(f"{where} is a symbolic link; refusing to replace it (give the real path or a new one)")
    if output.exists():
        mode = os.stat(output).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            raise ELOError(f"{where} is not a regular file or directory (a device, FIFO or socket); refusing to "
                           "replace it")
        if is_dir and not stat.S_ISDIR(mode):
            raise ELOError(f"{where} is a file, not a directory; refusing to replace it")
        if not is_dir and stat.S_ISDIR(mode):
            raise ELOError(f"{where} is a directory, not a file; refusing to replace it")
    real = _resolve(output)
    for group, label in ((inputs, "input"), (protected, "")):
        for what, path in (group or {}).items():
            if path is None or not os.path.lexists(path):
                continue
            rel = _relation(real, _resolve(path))
            if rel is not None:
                raise ELOError(f"{where} {rel} the {what} {path}{' (an ' + label + ')' if label else ''}; "
                               "write somewhere else")
    if output.exists() and not overwrite:
        found = output_kind(output)
        if stat.S_ISDIR(os.stat(output).st_mode):
            entries = [p.name for p in output.iterdir()]
            if entries and found != kind:
                what = f"a {found} output" if found else f"{len(entries)} entries ({', '.join(sorted(entries)[:3])}...)"
                raise ELOError(f"{where} is not empty and not a previous {kind} output (it holds {what}); "
                               "choose a new directory or pass --overwrite true")
        elif found != kind and output.stat().st_size > 0:
            raise ELOError(f"{where} exists and is not a previous {kind} output; choose a new file or pass "
                           "--overwrite true")
    return output


def claim_run_dir(output: str | Path, kind: str, *, inputs: PathMap | None = None, overwrite: bool = False) -> Path:
    """A run directory that a resumable command fills over time: refused as :func:`check_output` refuses an
    output (a foreign non-empty folder unless ``overwrite``, an input...), then marked as a ``kind`` output so
    that the next invocation continues in it."""
    out = check_output(output, kind, inputs=inputs, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    if output_kind(out) != kind:
        write_json_atomic(out / OUTPUT_MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return out


# -- leftovers ---------------------------------------------------------------------------------------------

_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def temp_prefix(name: str, what: str = "tmp") -> str:
    """Hidden sibling name of a temp file/folder for ``name``: ``.<name>.<what>-<host>-<pid>-``."""
    return f".{name}.{what}-{_HOST}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(leftover_suffix: str) -> bool:
    """``<host>-<pid>-<rand>`` of a temp name: stale when its process (on this host) is gone. Names from before
    the host/pid scheme (``<rand>`` only) are stale; temp names of other hosts are left alone."""
    parts = leftover_suffix.rsplit("-", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return True
    host, pid = parts[0], int(parts[1])
    return host == _HOST and pid != os.getpid() and not _alive(pid)


def clean_leftovers(output: str | Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` / ``.<name>.old-*`` left beside ``output`` by killed writes; returns what went."""
    output = Path(output)
    parent = output.parent
    if not parent.is_dir():
        return []
    removed = []
    for what in ("tmp", "old"):
        prefix = f".{output.name}.{what}-"
        for p in parent.glob(glob_escape(prefix) + "*"):
            if is_stale(p.name[len(prefix):]):
                _remove(p)
                removed.append(p)
    return removed


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- writers -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def atomic_dir(output: str | Path, kind: str = "output", *, inputs: PathMap | None = None,
               protected: PathMap | None = None, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory to fill; on success it replaces ``output`` (see the module docstring).

    Args:
        output: the directory to write.
        kind: what it is (``"detached"``, ``"chat_vector"``, ``"elo export"``...): an existing output is replaced
            only by one of the same kind (or with ``overwrite``).
        inputs: the command's inputs, ``{"--model": path}``: the output may not be, contain or be inside one.
        protected: folders to keep the same way (the trainer's log and checkpoint folders).
        overwrite: replace a non-empty directory that is not a previous output of this kind.
    """
    output = check_output(output, kind, inputs=inputs, protected=protected, overwrite=overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(output)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name), dir=output.parent))
    try:
        with writing(output):
            yield tmp
        write_json_atomic(tmp / OUTPUT_MARKER, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        ordinary_permissions(tmp)
        _swap_in(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(new: Path, output: Path) -> None:
    """Rename ``output`` aside, ``new`` in, then remove the old one; on failure the old one is put back."""
    old = None
    if os.path.lexists(output):
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name, "old"), dir=output.parent))
        os.replace(output, old)  # an (empty) directory as the target: replaced
    try:
        os.replace(new, output)
    except BaseException:
        if old is not None:
            os.replace(old, output)
        raise
    if old is not None:
        _remove(old)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """A JSON file written to a temp file + fsync + rename, with ordinary permissions (internal files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), dir=path.parent)
    try:
        with writing(path), os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        ordinary_permissions(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_output_json(path: str | Path, data: dict[str, Any], kind: str, *, inputs: PathMap | None = None,
                      protected: PathMap | None = None, overwrite: bool = False) -> Path:
    """A command's JSON output file: checked like a directory output (:func:`check_output`), marked with its kind
    (field :data:`OUTPUT_FIELD`) so that a rerun may replace it, written atomically."""
    path = check_output(path, kind, inputs=inputs, protected=protected, overwrite=overwrite, is_dir=False)
    clean_leftovers(path)
    write_json_atomic(path, {**data, OUTPUT_FIELD: kind})
    return path


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
