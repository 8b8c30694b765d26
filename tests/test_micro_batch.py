"""A batch stepped in chunks (GradCache, `TrainingTask.backward`) has the gradient of the whole batch, and a peer sizes
its chunk from the memory a step takes (cairn/peer/sizing.py). CPU only: the CUDA path, the same code with
`torch.cuda`'s memory counters, is tests/test_gpu_sizing.py (skipped without a GPU)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cairn.corpora import load_corpus
from cairn.peer.sizing import MemoryFit, micro_batch, small_chunk_advice
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import TrainingTask, initial_encoder, prepare_run, reference_texts

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH = 12


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    path = Path(tmp_path_factory.mktemp("corpus")) / "pairs.jsonl"
    rows = [
        {"a": f"word{i} of kind {i % 7}", "b": f"a sentence about word{i}, kind {i % 7}, and its neighbour word{i + 1}"} for i in range(120)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"jsonl:{path}"


def make_task(corpus_spec: str, model: str, anchor_refresh_every: int) -> tuple[TrainingTask, list]:
    config = TrainingConfig(
        model=model,
        initialisation="random",
        vocabulary="corpus",
        landmarks=16,
        reference_size=32,
        batch_size=BATCH,
        anchor_refresh_every=anchor_refresh_every,
        objective=replace(TrainingConfig().objective, prefix_dims=(8, 16)),
    )
    corpus = load_corpus(corpus_spec)
    tokenizer, landmarks = prepare_run(corpus, config)
    model_ = initial_encoder(config, tokenizer, init_seed=3)
    model_.train()
    return TrainingTask(model_, tokenizer, landmarks, reference_texts(corpus, config.reference_size), config), corpus.train[:BATCH]


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    found = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return found


def reference_gradient(task: TrainingTask, pairs: list, chunk: int) -> tuple[list[torch.Tensor], dict]:
    """What chunking must reproduce: the same chunks forwarded with their graphs kept, one loss over the whole batch."""
    anchors_learn, with_parent = task._before_step(compat=True)
    outputs = []
    for texts in ([p.a for p in pairs], [p.b for p in pairs]):
        for start in range(0, len(texts), chunk):
            ids, mask = task.tokenizer.batch(texts[start : start + chunk])
            outputs.append(task.model(ids, mask))
    half = len(outputs) // 2
    total, parts = task._loss_of(pairs, torch.cat(outputs[:half]), torch.cat(outputs[half:]), anchors_learn, with_parent)
    total.backward()
    return gradients(task.model), parts


@pytest.mark.parametrize("model, anchor_refresh_every", [("static", 5), ("tiny", 0)])
def test_a_batch_stepped_in_chunks_has_the_whole_batch_gradient(corpus, model, anchor_refresh_every):
    """The static encoder with anchors refreshed without gradient; the tiny transformer with dropout on and anchors
    that learn in every step (the default recipe's term)."""
    task, pairs = make_task(corpus, model, anchor_refresh_every)
    torch.manual_seed(11)
    whole_parts = task.backward(pairs)  # chunk None: one forward pass, as before
    whole = gradients(task.model)
    assert sum(float(g.abs().sum()) for g in whole) > 0
    for chunk in (1, 5, BATCH - 1):
        torch.manual_seed(11)
        chunked_parts = task.backward(pairs, chunk)
        chunked = gradients(task.model)
        torch.manual_seed(11)
        expected, expected_parts = reference_gradient(task, pairs, chunk)
        assert chunked_parts == pytest.approx(expected_parts, rel=1e-5, abs=1e-6)
        for got, want in zip(chunked, expected):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (chunk, float((got - want).abs().max()))
        if model == "static":  # no dropout: chunking changes nothing at all
            assert chunked_parts == pytest.approx(whole_parts, rel=1e-5, abs=1e-6)
            for got, want in zip(chunked, whole):
                assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (chunk, float((got - want).abs().max()))


def test_the_memory_fit_picks_the_largest_power_of_two_that_fits():
    fit = MemoryFit.through((4, 4 * 2**20 + 100 * 2**20), (16, 16 * 2**20 + 100 * 2**20))  # 100 MiB fixed, 1 MiB per pair
    assert fit.fixed == pytest.approx(100 * 2**20) and fit.per_pair == pytest.approx(2**20)
    assert fit.largest_chunk(free_bytes=2**30, batch_size=1024) == 512  # 0.8 GiB - 100 MiB: 719 pairs fit
    assert fit.largest_chunk(free_bytes=2 * 2**30, batch_size=1024) == 1024  # the whole batch fits
    assert fit.largest_chunk(free_bytes=2**30, batch_size=800) == 512  # 719 fit, not the whole 800
    assert fit.largest_chunk(free_bytes=100 * 2**20, batch_size=1024) == 1  # nothing fits: one pair at a time, not zero
    flat = MemoryFit.through((4, 5000), (16, 4000))  # noise: the larger chunk measured less
    assert flat.per_pair == 1.0 and flat.largest_chunk(2**30, 64) == 64


def test_a_cpu_peer_steps_its_whole_batch_unless_told_otherwise(corpus):
    task, pairs = make_task(corpus, "static", 5)
    assert micro_batch(task, pairs, BATCH) == BATCH
    assert micro_batch(task, pairs, BATCH, requested=4) == 4
    assert micro_batch(task, pairs, BATCH, requested=64) == BATCH


def test_a_chunk_too_small_to_be_fast_on_a_gpu_gets_one_line_of_advice():
    assert small_chunk_advice(8, 1024) is not None and "--device cpu" in small_chunk_advice(8, 1024)
    assert small_chunk_advice(64, 1024) is None and small_chunk_advice(1024, 1024) is None
    assert small_chunk_advice(12, 12) is None  # a small batch stepped whole is not a small chunk
