"""A CUDA peer sizes its forward passes from the GPU's free memory and takes that memory up front (cairn/peer/sizing.py).

Skipped without a CUDA GPU (the CI machines have none); run on a GPU machine with `pytest tests/test_gpu_sizing.py`.
The chunked gradient itself is checked on CPU by tests/test_micro_batch.py; here it is the memory: the chunk a peer
picks follows the free memory it measured, a step at that chunk fits where the whole batch does not, and the memory
is held by the peer's allocator after sizing. Also the 8-bit wire format on gradients that live on the GPU.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cairn.corpora import load_corpus
from cairn.peer.sizing import BUDGET, PROBE_CHUNKS, MemoryFit, micro_batch, step_peak_bytes
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import TrainingTask, initial_encoder, prepare_run, reference_texts

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
BATCH = 256
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def task_and_pairs(tmp_path_factory) -> tuple[TrainingTask, list]:
    path = Path(tmp_path_factory.mktemp("corpus")) / "pairs.jsonl"
    rows = [
        {"a": f"word{i} of kind {i % 7} " * (1 + i % 5), "b": f"a sentence about word{i}, kind {i % 7}, near word{i + 1} " * (1 + i % 3)}
        for i in range(4 * BATCH)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    corpus = load_corpus(f"jsonl:{path}")
    config = TrainingConfig(
        model="small",
        initialisation="random",
        vocabulary="corpus",
        landmarks=64,
        reference_size=64,
        batch_size=BATCH,
        objective=replace(TrainingConfig().objective, prefix_dims=(16, 64)),
    )
    tokenizer, landmarks = prepare_run(corpus, config)
    model = initial_encoder(config, tokenizer, init_seed=3).to(CUDA)
    model.train()
    return TrainingTask(model, tokenizer, landmarks, reference_texts(corpus, config.reference_size), config), corpus.train


def _free_bytes() -> int:
    return torch.cuda.mem_get_info()[0]


def test_a_gpu_with_room_steps_the_whole_batch_and_holds_its_memory_from_the_start(task_and_pairs):
    task, pairs = task_and_pairs
    torch.cuda.empty_cache()
    chunk = micro_batch(task, pairs, BATCH)
    held = torch.cuda.memory_reserved()
    assert chunk == BATCH  # a free H200 (or any card with a few GiB free) holds the whole batch's activations
    whole_peak = step_peak_bytes(task, pairs[:BATCH], CUDA, None)
    # the sizing step left the allocator holding at least one whole step's memory: a job that starts later meets it taken
    assert held >= whole_peak, (held, whole_peak)


def test_a_gpu_short_of_memory_steps_in_chunks_that_fit_where_the_whole_batch_does_not(task_and_pairs):
    """Another process's memory is stood in for by a filler tensor: free memory is what `mem_get_info` sees."""
    task, pairs = task_and_pairs
    longest = sorted(pairs[: 4 * BATCH], key=lambda p: len(p.a) + len(p.b), reverse=True)[:BATCH]
    peaks = [(n, step_peak_bytes(task, longest[:n], CUDA, None)) for n in PROBE_CHUNKS]
    fit = MemoryFit.through(*peaks)
    whole = step_peak_bytes(task, longest, CUDA, None)
    # the linear fit predicts the whole batch's step within a third (attention's padding grows with the longest text)
    assert abs(fit.fixed + fit.per_pair * BATCH - whole) < whole / 3, (fit, whole)
    torch.cuda.empty_cache()
    leave_free = int((fit.fixed + fit.per_pair * BATCH / 4) / BUDGET)  # room for about a quarter of the batch
    filler = torch.empty(max(_free_bytes() - leave_free, 0), dtype=torch.uint8, device=CUDA)
    try:
        free = _free_bytes()
        assert free < whole, "the filler did not leave less free memory than the whole batch's step needs"
        chunk = micro_batch(task, pairs, BATCH)
        assert 1 <= chunk < BATCH and chunk & (chunk - 1) == 0, chunk  # a power of two below the batch
        assert chunk <= fit.largest_chunk(free, BATCH) * 2, (chunk, free)
        peak = step_peak_bytes(task, longest, CUDA, chunk)  # the whole batch, in chunks: no out-of-memory error
        assert peak <= free, (peak, free)
        with pytest.raises(torch.cuda.OutOfMemoryError):
            bigger = torch.empty(free + 2**20, dtype=torch.uint8, device=CUDA)  # the memory really is that short
            del bigger
    finally:
        del filler
        torch.cuda.empty_cache()


def test_the_chunked_gpu_gradient_is_the_whole_batch_gradient(task_and_pairs):
    task, pairs = task_and_pairs
    batch = pairs[:64]
    task.model.eval()  # no dropout: the same function both ways
    try:
        task.backward(batch, None)
        whole = [p.grad.clone() for p in task.model.parameters() if p.grad is not None]
        task.model.zero_grad(set_to_none=True)
        task.backward(batch, 16)
        chunked = [p.grad.clone() for p in task.model.parameters() if p.grad is not None]
        task.model.zero_grad(set_to_none=True)
    finally:
        task.model.train()
    assert len(whole) == len(chunked) > 0
    for got, want in zip(chunked, whole):
        assert torch.allclose(got, want, rtol=1e-3, atol=1e-5), float((got - want).abs().max())


def test_bitsandbytes_blockwise_8bit_runs_on_the_gpu_with_the_cpu_error():
    """The 8-bit codec's kernels on a CUDA tensor: bytes on the GPU, the same error as on the CPU. (hivemind's wire
    serialisation itself takes CPU tensors only: its averagers keep their buffers in host memory for any device.)"""
    import bitsandbytes.functional as F

    gradient = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 1e-3
    errors = {}
    for device in ("cpu", "cuda"):
        codes, state = F.quantize_blockwise(gradient.to(device))
        assert codes.dtype == torch.uint8 and codes.device.type == device
        errors[device] = float((F.dequantize_blockwise(codes, state).cpu() - gradient).abs().max() / gradient.abs().max())
    assert errors["cuda"] < 0.02 and abs(errors["cuda"] - errors["cpu"]) < 0.005, errors
