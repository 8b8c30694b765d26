"""Cairn: volunteers train one shared text encoder; signed, versioned releases anyone can use.

The package, one folder per concern (docs/architecture.md has the map and the data flow):
  cairn.protocol    the contract every role agrees on: encoder, tokenizer, landmarks, run configuration,
                    wire messages, DHT records, ledger schema, workdir layout. Imports nothing else of ours.
  cairn.corpora     the training pairs (WordNet, JSON lines, Hugging Face datasets)
  cairn.training    the one training loop and its parts (task and loss, optimizer, distilled start, `cairn train`)
  cairn.evaluation  the evaluation suite and the release promises
  cairn.releases    signed releases: format, pull, verify, install, `cairn embed`, the sentence-transformers export
  cairn.tasks       task models on top of a release
  cairn.network     hivemind glue shared by the peer and the coordinator
  cairn.peer, cairn.coordinator, cairn.dashboard   the three roles; they never import each other
"""
