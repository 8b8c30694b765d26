"""The one training loop (trainer, peers, benchmarks) and its parts: the task and its loss, the optimizer,
the distilled start and `cairn train`."""
