"""GPU peers size themselves: how many texts one forward pass may hold, from the GPU's free memory at start (issue 13).

A run fixes the batch every peer steps with (the in-batch InfoNCE needs it whole, see `TrainingTask.backward`), but
not every volunteer's GPU holds that batch's activations. At start a CUDA peer measures what one training step
takes at two small chunk sizes (peak memory minus what was allocated before, `torch.cuda.max_memory_allocated`),
fits memory = fixed + per_pair x chunk, and takes the largest power-of-two chunk up to the batch that fits in
`BUDGET` of the memory free then (`torch.cuda.mem_get_info`, which sees other processes too). It then runs one step
at that chunk so that PyTorch's caching allocator holds the memory from the start: a game or another job that
starts later meets a GPU already taken, rather than this peer meeting an out-of-memory error an hour in.
A CPU peer steps with the whole batch (host memory is not the limit there; `--micro-batch` still applies).

Checked on an H200 by tests/test_gpu_sizing.py and bench/gpu_sizing.py (docs/benchmarks.md, section 16).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from cairn.corpora.base import Pair
from cairn.training.task import TrainingTask

logger = logging.getLogger("cairn.peer")

BUDGET = 0.8
"""Share of the free GPU memory a peer plans to use: the rest absorbs allocator fragmentation and the batch-wide loss."""
PROBE_CHUNKS = (4, 16)
"""Chunk sizes the memory fit is measured at: small enough for any GPU, far enough apart for a slope."""
SLOW_CHUNK = 64
"""Below this many texts a forward pass is launch-bound on a GPU: on an H200 the tiny encoder at chunk 8 stepped 20x
slower than whole (docs/benchmarks.md, section 16)."""


def small_chunk_advice(chunk: int, batch_size: int) -> str | None:
    """One line for the log when the chunk that fits is small enough to cost most of the GPU's speed."""
    if chunk >= min(SLOW_CHUNK, batch_size):
        return None
    return (
        f"only {chunk} texts per forward pass fit in the GPU memory free now: a step in chunks this small is slower "
        "than whole by 10x or more; free GPU memory and start again, or run with --device cpu"
    )


@dataclass(frozen=True)
class MemoryFit:
    """Bytes one training step needs: `fixed` + `per_pair` x chunk size (both texts of a pair, activations and all)."""

    fixed: float
    per_pair: float

    @classmethod
    def through(cls, small: tuple[int, int], large: tuple[int, int]) -> MemoryFit:
        """The line through two (chunk size, peak bytes) measurements; a non-positive slope counts as one byte."""
        (n1, bytes1), (n2, bytes2) = small, large
        per_pair = max((bytes2 - bytes1) / (n2 - n1), 1.0)
        return cls(fixed=max(bytes1 - per_pair * n1, 0.0), per_pair=per_pair)

    def largest_chunk(self, free_bytes: float, batch_size: int, budget: float = BUDGET) -> int:
        """The largest power of two up to `batch_size` (or `batch_size` itself) whose step fits in `budget` x free."""
        fits = int((budget * free_bytes - self.fixed) // self.per_pair)
        if fits >= batch_size:
            return batch_size
        return 2 ** int(math.log2(fits)) if fits >= 1 else 1


def micro_batch(task: TrainingTask, pairs: list[Pair], batch_size: int, requested: int | None = None) -> int:
    """Texts per forward pass for this peer: `requested` if given, the batch on CPU, else sized from free GPU memory,
    probed with the longest of the first pairs (near-worst-case padding)."""
    if requested is not None:
        return min(requested, batch_size)
    device = task.device
    if device.type != "cuda":
        return batch_size
    sample = sorted(pairs[: 4 * batch_size], key=lambda pair: len(pair.a) + len(pair.b), reverse=True)[:batch_size]
    peaks = [(n, step_peak_bytes(task, sample[:n], device)) for n in PROBE_CHUNKS]
    fit = MemoryFit.through(*peaks)
    free, total = torch.cuda.mem_get_info(device)
    chunk = fit.largest_chunk(free, batch_size)
    step_peak_bytes(task, sample[:batch_size], device, chunk)  # take the memory now (module doc)
    logger.info(
        "GPU: %.1f of %.1f GiB free; a step needs %.0f MiB + %.2f MiB per pair: %d texts per forward pass%s",
        free / 2**30,
        total / 2**30,
        fit.fixed / 2**20,
        fit.per_pair / 2**20,
        chunk,
        "" if chunk >= batch_size else f" (batch {batch_size} in {math.ceil(batch_size / chunk)} chunks)",
    )
    advice = small_chunk_advice(chunk, batch_size)
    if advice is not None:
        logger.warning(advice)
    return chunk


def step_peak_bytes(task: TrainingTask, pairs: list[Pair], device: torch.device, chunk: int | None = None) -> int:
    """Peak bytes a forward and backward of `pairs` allocates beyond what was allocated before; gradients cleared after."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    task.backward(pairs, chunk)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    task.model.zero_grad(set_to_none=True)
    return peak
