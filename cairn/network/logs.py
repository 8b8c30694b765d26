"""Quiet, structured logs for every role: hivemind's and p2pd's noise filtered at the source."""

from __future__ import annotations

import logging
import os
import threading

_HARMLESS_SHUTDOWN_NOISE = ("did not shut down within the grace period", "[Errno 2]", "[Errno 104]", "use of closed network connection")


def quiet_hivemind_logs(level: int = logging.WARNING) -> None:
    """Route hivemind's logs through the application's logging at `level`, without its known noise.

    hivemind installs its own colored stderr handler; "nowhere" hands its records to the root logger
    instead, so the application's logging configuration decides. p2pd (Go) logs are cut at the source
    with GOLOG_LOG_LEVEL unless the user set it. Must run before the DHT process forks to take effect there.
    """
    from hivemind.utils.logging import use_hivemind_log_handler

    quiet_known_noise()
    use_hivemind_log_handler("nowhere")
    logging.getLogger("hivemind").setLevel(level)
    os.environ.setdefault("GOLOG_LOG_LEVEL", "error")
    for name in ("hivemind.dht.dht", "hivemind.utils.mpfuture", "hivemind.p2p.p2p_daemon"):  # filters are not inherited by child loggers
        shutdown_logger = logging.getLogger(name)
        if _drop_shutdown_noise not in shutdown_logger.filters:
            shutdown_logger.addFilter(_drop_shutdown_noise)


def _drop_shutdown_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(noise in message for noise in _HARMLESS_SHUTDOWN_NOISE)


def quiet_known_noise() -> None:
    """Messages a volunteer takes for errors although nothing is wrong; call before the libraries are imported.

    - bitsandbytes >= 0.48 warns on import that an optional CPU kernel for 4-bit matmuls could not be
      fetched ("pip install kernels"): Cairn uses only its 8-bit blockwise quantisation, never 4-bit.
    - asyncio's "Task exception was never retrieved" for tasks hivemind starts and abandons in its own
      event loops (a peer that left mid-round, a cancelled matchmaking): hivemind has already handled the
      round; tracebacks from any other code still show.
    - hivemind's "Failed to download state from PEER" comes with a full traceback when the donor has just left
      (its protocol handler is gone); hivemind then tries the next donor, so the message stays, on one line.
    - hivemind logs a round that ended without a group or whose all-reduce failed ("Averaging step failed: could
      not find a group", a peer that left mid-round) with `logger.exception`: an ordinary event of a swarm whose
      peers come and go, which the peer counts as a failed round and hivemind answers with local gradients. The
      message stays, on one line.
    """
    bitsandbytes = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if _drop_4bit_kernel_notice not in bitsandbytes.filters:
        bitsandbytes.addFilter(_drop_4bit_kernel_notice)
    asyncio_logger = logging.getLogger("asyncio")
    if _drop_abandoned_hivemind_tasks not in asyncio_logger.filters:
        asyncio_logger.addFilter(_drop_abandoned_hivemind_tasks)
    averager = logging.getLogger("hivemind.averaging.averager")
    if _one_line_state_download_failure not in averager.filters:
        averager.addFilter(_one_line_state_download_failure)
    if threading.excepthook is not _quiet_hivemind_shutdown_threads:
        global _previous_excepthook
        _previous_excepthook = threading.excepthook
        threading.excepthook = _quiet_hivemind_shutdown_threads


_previous_excepthook = threading.excepthook
# p2pd already gone: Ctrl+C in a terminal signals the whole process group, and the Go daemon exits at once
_DAEMON_GONE = (FileNotFoundError, ConnectionError, BrokenPipeError, EOFError)


def _quiet_hivemind_shutdown_threads(args) -> None:
    """An averager's shutdown thread (inherited by hivemind's forked processes) that finds p2pd gone prints
    "Exception in thread ... FileNotFoundError" although it had nothing left to do: drop exactly that."""
    if isinstance(args.exc_value, _DAEMON_GONE) and _raised_in_hivemind(args.exc_traceback, function="_shutdown"):
        return
    _previous_excepthook(args)


def _raised_in_hivemind(traceback, function: str | None = None) -> bool:
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if f"{os.sep}hivemind{os.sep}" in code.co_filename and (function is None or code.co_name == function):
            return True
        traceback = traceback.tb_next
    return False


def _drop_4bit_kernel_notice(record: logging.LogRecord) -> bool:
    return "gemm_4bit" not in record.getMessage()


def _drop_abandoned_hivemind_tasks(record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Task exception was never retrieved") or not record.exc_info:
        return True
    return not _raised_in_hivemind(record.exc_info[2])


def _one_line_state_download_failure(record: logging.LogRecord) -> bool:
    if record.exc_info and (record.getMessage().startswith("Failed to download state from") or _failed_round(record.exc_info[1])):
        record.exc_info, record.exc_text = None, None  # hivemind's message already names the error
    return True


def _failed_round(error: BaseException | None) -> bool:
    """An averaging round that failed the way rounds fail in a live swarm (no group, a peer gone mid-round).

    By name, not isinstance: a logging filter must not import hivemind (importing it reconfigures logging)."""
    kind = type(error)
    return kind.__module__.startswith("hivemind.averaging.") and kind.__name__ in ("AllreduceException", "MatchmakingException")
