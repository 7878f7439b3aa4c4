"""Training budgets in the paper's units: bytes of raw text (``9GB``, ``500MB``) or tokens (``100M tokens``).

The paper sizes every pretraining stage in GB of text (ELO 9 GB, alignment 1 GB, FFT 10 GB). A stream of packed
sequences is consumed in tokens, so a byte budget becomes tokens through the stream's measured bytes per token
(UTF-8 bytes of document text / tokens, the appended ``</s>`` included) and then optimizer steps:

    steps = ceil(budget_tokens / (batch_size * seq_len * world_size * accumulate_grad_batches))

Units are decimal as on disks and in the paper (1 GB = 10^9 bytes); ``KiB``/``MiB``/``GiB``/``TiB`` are binary.
Token counts take ``K``/``M``/``B`` (or ``G``)/``T`` = 10^3/10^6/10^9/10^12.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from elo_lightning.errors import ELOError

_BYTE_UNITS = {"b": 1, "byte": 1, "bytes": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
_NUMBER = r"(\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+(?:e[+-]?\d+)?)"
_TOKENS = re.compile(rf"^{_NUMBER}\s*([kmbgt]?)\s*[ _-]?\s*tokens?$", re.IGNORECASE)
_BYTES = re.compile(rf"^{_NUMBER}\s*([kmgt]i?b|b|bytes?)$", re.IGNORECASE)


@dataclass(frozen=True)
class Budget:
    """A parsed budget: ``amount`` in ``unit`` ("bytes" or "tokens"), and the text it came from."""

    amount: float
    unit: str
    text: str


def parse_budget(text: str) -> Budget:
    """``"9GB"`` -> 9e9 bytes, ``"500MB"``, ``"1.5GiB"``, ``"100M tokens"``, ``"2B tokens"``. Raises ELOError."""
    s = str(text).strip()
    if m := _TOKENS.match(s):
        amount = float(m.group(1)) * _COUNT_SUFFIX[m.group(2).lower()]
        unit = "tokens"
    elif m := _BYTES.match(s):
        amount = float(m.group(1)) * _BYTE_UNITS[m.group(2).lower()]
        unit = "bytes"
    else:
        raise ELOError(f"budget {text!r}: expected bytes of text like '9GB', '500MB', '1.5GiB' or tokens like "
                       f"'100M tokens'")
    if not math.isfinite(amount) or amount <= 0:
        raise ELOError(f"budget {text!r}: must be a positive amount")
    return Budget(amount, unit, s)


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget turned into; logged as ``data/budget_*`` and recorded in the stream state."""

    budget: str
    unit: str
    budget_bytes: float
    budget_tokens: float
    bytes_per_token: float
    measured_documents: int
    tokens_per_step: int
    max_steps: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_budget(budget: Budget, bytes_per_token: float, measured_documents: int, batch_size: int, seq_len: int,
                world_size: int = 1, accumulate: int = 1) -> BudgetPlan:
    """Turn a budget into optimizer steps at the measured bytes per token (at least one step)."""
    if not bytes_per_token > 0:
        raise ELOError(f"cannot turn budget {budget.text!r} into steps: measured {bytes_per_token} bytes per token")
    if budget.unit == "bytes":
        nbytes, ntokens = budget.amount, budget.amount / bytes_per_token
    else:
        nbytes, ntokens = budget.amount * bytes_per_token, budget.amount
    per_step = int(batch_size) * int(seq_len) * int(world_size) * int(accumulate)
    return BudgetPlan(budget=budget.text, unit=budget.unit, budget_bytes=nbytes, budget_tokens=ntokens,
                      bytes_per_token=bytes_per_token, measured_documents=measured_documents,
                      tokens_per_step=per_step, max_steps=max(1, math.ceil(ntokens / per_step)))
