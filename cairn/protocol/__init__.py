"""The shared contract of Cairn: encoder, tokenizer, landmark math, run configuration, wire messages, DHT records,
the ledger schema and the coordinator workdir's files (workdir.py).

This package imports nothing else of ours; peer/, coordinator/ and dashboard/ import it, and talk to each other
only through it.
"""

# 2: the static encoder family and the encoder's `architecture` field, the run's vocabulary and initialisation,
#    warm-up counted in optimizer updates, the optimizer's pull toward the start (its state carries "start"),
#    and the `collapsed` flag in contribution records. A v1 peer would build a different model from a v2 config.
# 3: owner-keyed shard leases that carry their holder's progress (one `shard_leases` entry per shard and holder, no
#    `shard_progress` key): a v2 peer's plain-subkey leases are refused by v3 nodes' schema.
PROTOCOL_VERSION = 3
