"""GPU peers size themselves (issue 13, item 4): what a CUDA peer picks, and what a step then costs.

    .venv/bin/python bench/gpu_sizing.py --corpus wordnet --out bench/out/gpu_sizing.json

For each encoder size at the run's batch (`TrainingConfig().batch_size`, 1024 pairs), on the GPU this runs on:
the memory fit `cairn/peer/sizing.py` measures (fixed + per pair), the chunk it picks from the free memory, and the
median time of a training step (forward and backward of the whole batch, in that chunk) with the pairs per second it
gives. Then the same with most of the GPU taken by a filler tensor (another process's memory, as `mem_get_info`
sees it), leaving `--squeeze-gib` free: the chunk shrinks and the step still fits. Needs a CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.corpora import load_corpus  # noqa: E402
from cairn.peer.sizing import micro_batch  # noqa: E402
from cairn.protocol.run_config import TrainingConfig  # noqa: E402
from cairn.training.task import TrainingTask, initial_encoder, prepare_run, reference_texts  # noqa: E402


def timed_steps(task: TrainingTask, pairs: list, batch: int, chunk: int, steps: int) -> float:
    """Median seconds of a whole-batch training step at `chunk` texts per forward pass (after one warm-up)."""
    times = []
    for index in range(steps + 1):
        start = index * batch % max(len(pairs) - batch, 1)
        torch.cuda.synchronize()
        began = time.perf_counter()
        task.backward(pairs[start : start + batch], chunk)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
        task.model.zero_grad(set_to_none=True)
    return statistics.median(times[1:])


def measure(model: str, corpus, squeeze_gib: list[float], steps: int) -> list[dict]:
    config = TrainingConfig(model=model, initialisation="random")
    batch = config.batch_size
    tokenizer, landmarks = prepare_run(corpus, config)
    encoder = initial_encoder(config, tokenizer, init_seed=0).to("cuda").train()
    task = TrainingTask(encoder, tokenizer, landmarks, reference_texts(corpus, config.reference_size), config)
    pairs = corpus.train[: 8 * batch]
    rows = []
    for free_gib in [None, *squeeze_gib]:
        gc.collect()  # the last row's filler, before its cached block goes back to the driver
        torch.cuda.empty_cache()
        filler = None
        if free_gib is not None:
            filler = torch.empty(max(torch.cuda.mem_get_info()[0] - int(free_gib * 2**30), 0), dtype=torch.uint8, device="cuda")
        try:
            free, total = torch.cuda.mem_get_info()
            sized = time.perf_counter()
            chunk = micro_batch(task, pairs, batch)
            sizing_s = time.perf_counter() - sized
            before = torch.cuda.memory_allocated()  # the model, its gradients' buffers and the filler
            torch.cuda.reset_peak_memory_stats()
            step_s = timed_steps(task, pairs, batch, chunk, steps)
            row = {
                "model": model,
                "parameters": sum(p.numel() for p in encoder.parameters()),
                "batch": batch,
                "free_gib": round(free / 2**30, 2),
                "total_gib": round(total / 2**30, 1),
                "chunk": chunk,
                "sizing_s": round(sizing_s, 2),
                "step_s": round(step_s, 4),
                "pairs_per_s": round(batch / step_s),
                "step_peak_gib": round((torch.cuda.max_memory_allocated() - before) / 2**30, 2),
            }
        finally:
            del filler
            gc.collect()
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="wordnet")
    parser.add_argument("--models", default="static,tiny,small")
    parser.add_argument("--squeeze-gib", default="2,0.5", help="free GiB to leave in the squeezed rows")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_sizing.py needs a CUDA GPU")
    corpus = load_corpus(args.corpus)
    squeeze = [float(value) for value in args.squeeze_gib.split(",") if value]
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "rows": [row for model in args.models.split(",") for row in measure(model, corpus, squeeze, args.steps)],
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
