"""Messages the project causes but no user can act on, silenced by the ``elo`` entry point (and nothing else).

* Lightning's advertising tips ("💡 Tip: ... litlogger / litmodels"), printed by every Trainer;
* bitsandbytes' warning, on CPUs with AVX512-BF16, that its optional 4-bit CPU kernel (``kernels`` package) is
  missing: the project uses only 8-bit AdamW, never a 4-bit matmul;
* deprecation warnings raised inside Lightning by newer torch (``isinstance(treespec, LeafSpec)``).

Our own warnings (8-bit AdamW fallback, new mixing weights on resume...) and Lightning's other messages stay.
"""

from __future__ import annotations

import logging
import warnings

_LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"
_BNB_CPU_OPS = "bitsandbytes.backends.cpu.ops"
_DEPRECATIONS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def silence_known_noise() -> None:
    """Install the filters (idempotent)."""
    logger = logging.getLogger(_LIGHTNING_INFO)
    if not any(isinstance(f, _NoTips) for f in logger.filters):
        logger.addFilter(_NoTips())
    logging.getLogger(_BNB_CPU_OPS).setLevel(logging.ERROR)
    for message in _DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)
