"""The shared contract of Cairn: encoder, tokenizer, landmark math, run configuration, wire messages, DHT records,
the ledger schema and the coordinator workdir's files (workdir.py).

This package imports nothing else of ours; peer/, coordinator/ and dashboard/ import it, and talk to each other
only through it.
"""

# 2: the static encoder family and the encoder's `architecture` field, the run's vocabulary and initialisation,
#    warm-up counted in optimizer updates, the optimizer's pull toward the start (its state carries "start"),
#    and the `collapsed` flag in contribution records. A v1 peer would build a different model from a v2 config.
PROTOCOL_VERSION = 2
