"""`elo` silences Lightning's tips, bitsandbytes' 4-bit CPU kernel warning and Lightning's deprecation noise only."""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.utilities import rank_zero_info

from elo_lightning.quiet import silence_known_noise


def test_known_noise_is_silenced_and_nothing_else(caplog):
    silence_known_noise()
    silence_known_noise()  # idempotent
    with caplog.at_level(logging.INFO):
        rank_zero_info("💡 Tip: For seamless cloud logging, try installing litlogger")
        rank_zero_info("GPU available: False, used: False")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        silence_known_noise()  # catch_warnings restored the filters; install them again inside
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("8-bit AdamW unavailable here", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["8-bit AdamW unavailable here"]
