"""Quiet imports offline: bitsandbytes' optional CPU kernel from the Hub.

peft imports bitsandbytes whenever it is installed (so transformers' Trainer does too), and bitsandbytes'
import then tries to fetch an optional CPU kernel for 4-bit matmuls from the Hugging Face Hub (on CPUs with
AVX512-BF16). With ``HF_HUB_OFFLINE`` set that fetch cannot succeed, and bitsandbytes and the ``kernels``
package each log a warning about it on every run, 4-bit or not. bitsandbytes then uses its generic NF4
code, which is what spiel's 4-bit CPU path is written for: nothing is lost, so offline these two messages are
dropped. (Deferring the import itself is not possible: peft imports bitsandbytes at import time, and a lazy
module is loaded by any ``inspect.getmodule`` scan of ``sys.modules``, which torch runs while registering ops.)
"""

from __future__ import annotations

import logging
import os

KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
LOGGERS = ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class OfflineKernelFetchFilter(logging.Filter):
    """Drops the records about fetching bitsandbytes' CPU kernel while the Hub is offline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (hub_offline() and KERNEL_REPO in record.getMessage())


_FILTER = OfflineKernelFetchFilter()


def quiet_offline_kernel_fetch() -> None:
    """Install the filter on the two loggers (before bitsandbytes is first imported; idempotent)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
