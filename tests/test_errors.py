"""user_message: an ELOError anywhere in the exception chain, or a full disk, is one line; anything else is a bug."""

from __future__ import annotations

import errno
import os

import pytest

from elo_lightning.errors import ELOError, user_message, writing


def _wrapped(inner: BaseException) -> BaseException:
    """What jsonargparse does to an error raised while instantiating a config's class."""
    try:
        try:
            raise inner
        except Exception as e:
            raise TypeError("instantiation failed") from e
    except TypeError:
        try:
            raise ValueError("Does not validate against any of the Union subtypes\nErrors:\n - ...")
        except ValueError as outer:
            return outer


def test_elo_error_found_through_causes_and_contexts():
    assert user_message(ELOError("seq_len must be >= 2")) == "seq_len must be >= 2"
    assert user_message(_wrapped(ELOError("seq_len must be >= 2"))) == "seq_len must be >= 2"


def test_dataloader_worker_message_keeps_only_the_error():
    worker = ELOError("Caught ELOError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                      '  File "x.py", line 1, in f\n    raise ELOError(...)\n'
                      "elo_lightning.errors.ELOError: a.jsonl: record at byte 7 is not valid JSON\n")
    assert user_message(worker) == "a.jsonl: record at byte 7 is not valid JSON"


def test_programming_errors_are_not_translated():
    assert user_message(KeyError("x")) is None
    assert user_message(_wrapped(RuntimeError("shape mismatch"))) is None


def test_full_disk():
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/model.safetensors")
    assert user_message(err) == "no space left on device while writing /data/out/model.safetensors"
    rust = Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                     'device" })')
    assert user_message(_wrapped(rust)) == "no space left on device while writing the output"
    with pytest.raises(ELOError, match="^no space left on device while writing runs/x$"), writing("runs/x"):
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: No space left on device")
    with pytest.raises(RuntimeError, match="unrelated"), writing("runs/x"):
        raise RuntimeError("unrelated")
