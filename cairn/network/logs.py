"""Quiet, structured logs for every role: hivemind's and p2pd's noise filtered at the source."""

from __future__ import annotations

import logging
import os

_HARMLESS_SHUTDOWN_NOISE = ("did not shut down within the grace period", "[Errno 2]", "[Errno 104]")


def quiet_hivemind_logs(level: int = logging.WARNING) -> None:
    """Route hivemind's logs through the application's logging at `level`, without its known noise.

    hivemind installs its own colored stderr handler; "nowhere" hands its records to the root logger
    instead, so the application's logging configuration decides. p2pd (Go) logs are cut at the source
    with GOLOG_LOG_LEVEL unless the user set it. Must run before the DHT process forks to take effect there.
    """
    from hivemind.utils.logging import use_hivemind_log_handler

    use_hivemind_log_handler("nowhere")
    logging.getLogger("hivemind").setLevel(level)
    os.environ.setdefault("GOLOG_LOG_LEVEL", "error")
    for name in ("hivemind.dht.dht", "hivemind.utils.mpfuture"):  # filters are not inherited by child loggers
        shutdown_logger = logging.getLogger(name)
        if _drop_shutdown_noise not in shutdown_logger.filters:
            shutdown_logger.addFilter(_drop_shutdown_noise)


def _drop_shutdown_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _HARMLESS_SHUTDOWN_NOISE)
